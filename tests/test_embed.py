"""Item text -> features: the Flax BERT encoder against an independent NumPy forward pass
of the same safetensors weights, batching invariants, clear errors for broken model
folders and missing text, and `tokenizer.feature="text"` training TIGER in one command.

The tests write a tiny random BERT folder (safetensors weights, a WordPiece tokenizer via
`tokenizers`); CI has neither torch nor a real model. Parity with sentence-transformers on
the real all-MiniLM-L6-v2 is bench/experiments/embed_parity.py."""
import json
import os

import chex
import numpy as np
import pytest

import tiger
from jaxrec import pipeline
from jaxrec.config import ConfigError
from jaxrec.data import DataError, load_dataset
from jaxrec.text import embedding as embed
from jaxrec.data.synthetic import SyntheticSpec, generate
from jaxrec.text import bert

WORDS = ("guitar string amp cable drum stick pedal tuner strap pick bass violin bow rosin "
         "mic stand case capo reed horn").split()
H, LAYERS, HEADS, INTER, MAXPOS, MAXSEQ = 32, 2, 4, 64, 64, 24


def write_model(folder, model_type="bert", pooling=True, normalize=True, seed=0):
  from safetensors.numpy import save_file
  from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
  os.makedirs(os.path.join(folder, "1_Pooling"), exist_ok=True)
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + ["##s", "##er", ";", "."]
  vocab = {t: i for i, t in enumerate(vocab)}
  tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
  tok.save(os.path.join(folder, "tokenizer.json"))
  rng = np.random.default_rng(seed)
  w = lambda *s: (rng.normal(size=s) * 0.2).astype(np.float32)
  t = {"embeddings.word_embeddings.weight": w(len(vocab), H),
       "embeddings.position_embeddings.weight": w(MAXPOS, H),
       "embeddings.token_type_embeddings.weight": w(2, H),
       "embeddings.LayerNorm.weight": 1 + w(H), "embeddings.LayerNorm.bias": w(H)}
  for i in range(LAYERS):
    p = f"encoder.layer.{i}."
    for name, (o, n) in {"attention.self.query": (H, H), "attention.self.key": (H, H),
                         "attention.self.value": (H, H), "attention.output.dense": (H, H),
                         "intermediate.dense": (INTER, H), "output.dense": (H, INTER)}.items():
      t[p + name + ".weight"], t[p + name + ".bias"] = w(o, n), w(o)
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
      t[p + name + ".weight"], t[p + name + ".bias"] = 1 + w(H), w(H)
  save_file(t, os.path.join(folder, "model.safetensors"))
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump({"model_type": model_type, "vocab_size": len(vocab), "hidden_size": H,
               "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
               "intermediate_size": INTER, "max_position_embeddings": MAXPOS,
               "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}, f)
  modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
  if pooling:
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling"})
  if normalize:
    modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize"})
  with open(os.path.join(folder, "modules.json"), "w") as f:
    json.dump(modules, f)
  with open(os.path.join(folder, "1_Pooling", "config.json"), "w") as f:
    json.dump({"word_embedding_dimension": H, "pooling_mode_mean_tokens": True,
               "pooling_mode_cls_token": False, "pooling_mode_max_tokens": False}, f)
  with open(os.path.join(folder, "sentence_bert_config.json"), "w") as f:
    json.dump({"max_seq_length": MAXSEQ, "do_lower_case": False}, f)
  return t, tok


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("bert"))
  tensors, tok = write_model(folder)
  return folder, tensors, tok


@pytest.fixture(scope="module")
def encoder(model_dir):
  return embed.Encoder(model_dir[0], batch_size=4)


def numpy_bert(tensors, ids):
  """BERT's forward pass written directly on the HF tensors: mean pooling, L2 norm."""
  from math import erf, sqrt
  gelu = np.vectorize(lambda x: 0.5 * x * (1 + erf(x / sqrt(2))))
  def ln(x, p):
    m, v = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-12) * tensors[p + ".weight"] + tensors[p + ".bias"]
  lin = lambda x, p: x @ tensors[p + ".weight"].T + tensors[p + ".bias"]
  e = "embeddings."
  x = (tensors[e + "word_embeddings.weight"][ids] + tensors[e + "position_embeddings.weight"][:len(ids)]
       + tensors[e + "token_type_embeddings.weight"][0])
  x = ln(x, e + "LayerNorm")
  dh = H // HEADS
  for i in range(LAYERS):
    p = f"encoder.layer.{i}."
    q, k, v = (lin(x, p + f"attention.self.{n}").reshape(len(ids), HEADS, dh) for n in ("query", "key", "value"))
    s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(dh)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    ctx = np.einsum("hqk,khd->qhd", a, v).reshape(len(ids), H)
    x = ln(x + lin(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
    x = ln(x + lin(gelu(lin(x, p + "intermediate.dense")), p + "output.dense"), p + "output.LayerNorm")
  v = x.mean(0)
  return v / np.linalg.norm(v)


TEXTS = ["Guitar string", "drum sticks; bass pedal tuner strap pick cable amp mic stand case",
         "violin bow rosin", "capo", "horn reed " * 30]


def test_encoder_equals_numpy_forward_of_the_same_weights(model_dir, encoder):
  _, tensors, _ = model_dir
  got = encoder.encode(TEXTS)
  for text, vec in zip(TEXTS, got):
    ids = encoder.tokenizer.encode(text).ids           # the folder's truncation (24 tokens)
    assert len(ids) <= MAXSEQ
    np.testing.assert_allclose(vec, numpy_bert(tensors, np.asarray(ids)), atol=2e-5, rtol=1e-4)


def test_alone_or_batched_unit_norm_deterministic(encoder):
  batched = encoder.encode(TEXTS)
  alone = np.stack([encoder.encode([t])[0] for t in TEXTS])
  chex.assert_trees_all_close(alone, batched, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(encoder.encode(TEXTS), batched)
  # streamed in chunks of 2 (bounded memory) == all at once
  np.testing.assert_allclose(encoder.encode(TEXTS, chunk=2), batched, atol=1e-6)


@pytest.mark.parametrize("break_it, message", [
    (lambda d: os.remove(os.path.join(d, "config.json")), "config.json: not found"),
    (lambda d: os.remove(os.path.join(d, "model.safetensors")), "model.safetensors: not found"),
    (lambda d: os.remove(os.path.join(d, "tokenizer.json")), "tokenizer.json: not found"),
    (lambda d: write_model(d, model_type="t5"), "model_type 't5' is not supported"),
    (lambda d: write_model(d, pooling=False), "lists no Pooling module"),
])
def test_broken_model_folder_is_one_clear_error(tmp_path, break_it, message):
  folder = str(tmp_path / "m")
  write_model(folder)
  break_it(folder)
  with pytest.raises(bert.ModelFolderError, match=message):
    embed.Encoder(folder)


def text_data(directory, n_items=120, name="Toy", drop_text_of=None):
  """The tiny synthetic interactions in LETTER's format with an item file of titles."""
  ds, _ = generate(SyntheticSpec(n_users=200, n_items=n_items, n_topics=3, n_subtopics=3))
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, f"{name}.inter.json"), "w") as f:
    json.dump({str(u): [int(i) for i in ds.sequence(u)] for u in range(ds.n_users)}, f)
  rng = np.random.default_rng(0)
  items = {str(i): {"title": " ".join(rng.choice(WORDS, 3)), "brand": WORDS[i % 5],
                    "description": "", "categories": ""} for i in range(n_items)}
  if drop_text_of is not None:
    items[str(drop_text_of)] = {"title": "", "brand": None}
  with open(os.path.join(directory, f"{name}.item.json"), "w") as f:
    json.dump(items, f)
  return name


def text_config(directory, name, out_dir, model=""):
  cfg = tiger.get_config("tiny")
  cfg.data.source, cfg.data.dir, cfg.data.name, cfg.data.features = "letter", directory, name, ()
  cfg.tokenizer.feature = "text"
  cfg.embed.out_dir, cfg.embed.model = out_dir, model
  cfg.tokenizer.suffix_size = 128   # a random tiny BERT maps short titles close together
  return cfg


def test_item_text_joins_fields_and_names_items_without_text(tmp_path):
  from jaxrec.data import load_dataset
  name = text_data(str(tmp_path / "d"))
  cfg = text_config(str(tmp_path / "d"), name, "")
  ds = load_dataset(cfg.data)
  texts = embed.item_texts(ds, ("title", "brand", "description"))
  assert texts[0] == f"{ds.item_text[0]['title']}; {ds.item_text[0]['brand']}"   # empty skipped
  assert embed.item_texts(ds, ("title",))[0] == ds.item_text[0]["title"]
  name = text_data(str(tmp_path / "e"), drop_text_of=7)
  ds = load_dataset(text_config(str(tmp_path / "e"), name, "").data)
  with pytest.raises(DataError, match=r"item '7': has none of the text fields"):
    embed.item_texts(ds, ("title", "brand"))


def test_text_feature_trains_tiger_in_one_command(tmp_path, model_dir):
  data, out = str(tmp_path / "d"), str(tmp_path / "text")
  name = text_data(data)
  cfg = text_config(data, name, out)
  with pytest.raises(ConfigError, match="'text' of data set 'Toy' is not embedded yet"):
    pipeline.train_and_evaluate(cfg, str(tmp_path / "w0"), log=lambda m: None)
  assert not os.path.exists(os.path.join(out, "Toy.text.npy"))
  cfg = text_config(data, name, out, model=model_dir[0])
  logs = []
  res = pipeline.train_and_evaluate(cfg, str(tmp_path / "w1"), log=logs.append)
  assert any(l.startswith("embedded 120 items") for l in logs)
  feats = np.load(os.path.join(out, "Toy.text.npy"))
  meta = json.load(open(os.path.join(out, "Toy.text.json")))
  assert feats.shape == (120, H) and meta["items"] == 120 and meta["dim"] == H
  assert res["tokenizer"]["source"] == "rqvae" and 0 <= res["test"]["recall@10"] <= 1
  # a second run reads the file; changed text is refused with the file named
  cfg2 = text_config(data, name, out)
  ds = load_dataset(cfg2.data)
  np.testing.assert_array_equal(embed.text_embeddings(cfg2, ds, log=lambda m: None), feats)
  cfg2.embed.fields = ("title",)
  with pytest.raises(ConfigError, match="Toy.text.npy: embedded from other text"):
    embed.text_embeddings(cfg2, ds, log=lambda m: None)
  # a damaged cache is embedded again: the run's metrics are a clean cache's
  with open(os.path.join(out, "Toy.text.npy"), "r+b") as f:
    f.truncate(os.path.getsize(os.path.join(out, "Toy.text.npy")) // 2)
  logs = []
  again = pipeline.train_and_evaluate(cfg, str(tmp_path / "w2"), log=logs.append)
  assert any("is damaged" in l and "embedding again" in l for l in logs), logs[:4]
  for split in ("valid", "test"):
    assert again[split] == {**res[split], "decode_s": again[split]["decode_s"]}


@pytest.mark.parametrize("how", ["truncated", "zero-length", "bit-flipped"])
def test_a_damaged_text_cache_is_rebuilt_or_named_in_one_line(tmp_path, model_dir, how):
  from test_cache import damage
  data, out = str(tmp_path / "d"), str(tmp_path / "text")
  name = text_data(data)
  cfg = text_config(data, name, out, model=model_dir[0])
  ds = load_dataset(cfg.data)
  clean = embed.text_embeddings(cfg, ds, log=lambda m: None)
  path = os.path.join(out, "Toy.text.npy")
  damage(path, how)
  bare = text_config(data, name, out)             # no embed.model: cannot rebuild
  with pytest.raises(ConfigError) as e:
    embed.text_embeddings(bare, ds, log=lambda m: None)
  assert str(e.value).startswith(f"{path} is damaged") and "python -m jaxrec.embed" in str(e.value)
  assert "\n" not in str(e.value)
  logs = []
  np.testing.assert_array_equal(embed.text_embeddings(cfg, ds, log=logs.append), clean)
  assert any(l.startswith(f"text: {path} is damaged") for l in logs), logs
  assert os.path.exists(path + ".damaged")


EMBED = """
import os, sys
import jax
sys.path.insert(0, os.path.join({repo!r}, "configs"))
sys.path.insert(0, os.path.join({repo!r}, "tests"))
jax.config.update("jax_compilation_cache_dir", os.environ["JAXREC_COMPILE_CACHE"])
from test_embed import text_config
from jaxrec.data import load_dataset
from jaxrec.text.embedding import text_embeddings
cfg = text_config(sys.argv[1], "Toy", sys.argv[2], model=sys.argv[3])
print("started", flush=True)
text_embeddings(cfg, load_dataset(cfg.data), log=lambda m: print(m, flush=True))
"""


def test_killed_while_embedding_the_rerun_equals_an_uninterrupted_run(tmp_path, model_dir):
  import random
  import subprocess
  import sys
  import time
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  data, out = str(tmp_path / "d"), str(tmp_path / "text")
  text_data(data, n_items=2000)                      # long enough to be killed inside
  cfg = text_config(data, "Toy", str(tmp_path / "clean"), model=model_dir[0])
  clean = embed.text_embeddings(cfg, load_dataset(cfg.data), log=lambda m: None)
  script = EMBED.format(repo=repo)
  rng = random.Random(34)
  for _ in range(2):
    p = subprocess.Popen([sys.executable, "-c", script, data, out, model_dir[0]],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert p.stdout.readline().strip() == "started"
    time.sleep(rng.uniform(0.2, 2.0))
    p.kill()
    p.wait()
  p = subprocess.run([sys.executable, "-c", script, data, out, model_dir[0]],
                     capture_output=True, text=True)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
  again = embed.text_embeddings(text_config(data, "Toy", out), load_dataset(cfg.data),
                                log=lambda m: None)
  np.testing.assert_array_equal(again, clean)
  assert [f for f in os.listdir(out) if ".tmp" in f or f.endswith(".lock")] == []
