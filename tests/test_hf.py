"""Pretrained decoders from Hugging Face folders: the tiny Qwen2, Qwen3 and LLaMA in
tests/fixtures/hf (random weights, saved by transformers; tests/fixtures/hf/make_reference.py)
give transformers' float32 logits to 1e-4 and its greedy generations token for token; the
ID tokens leave the pretrained rows unchanged; broken folders are reported by file."""
import functools
import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.errors import DataError
from jaxrec.recommender import hf
from jaxrec.recommender.decoder import Decoder, empty_cache

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "hf")
ARCHS = ("qwen2", "qwen3", "llama")


@functools.lru_cache(maxsize=None)
def _loaded(name):
  cfg, params = hf.load(os.path.join(FIXTURES, name))
  return Decoder(cfg), jax.tree.map(jnp.asarray, params)


@functools.partial(jax.jit, static_argnames="model")
def _logits(params, tokens, *, model):
  hidden, _, _ = model.apply(params, tokens, jnp.ones(tokens.shape, bool))
  return model.apply(params, hidden, method=Decoder.vocab_logits)


def _greedy(model, params, prompt, n):
  """Greedy continuation through the cached path: the prefix pass, then one cached
  position per token."""
  tok = jnp.asarray([prompt])
  last, kvs, bias, pos0 = model.apply(params, tok, jnp.ones(tok.shape, bool), method=Decoder.prefix)
  kvs = jax.tree.map(lambda a: a[0], kvs)
  nxt = jnp.argmax(model.apply(params, last, method=Decoder.vocab_logits), -1)
  out, cache = [int(nxt[0])], empty_cache(model.cfg)
  for i in range(n - 1):
    hidden, cache = model.apply(params, nxt, pos0[0] + i, cache, kvs, bias[0],
                                method=Decoder.decode_step)
    nxt = jnp.argmax(model.apply(params, hidden, method=Decoder.vocab_logits), -1)
    out.append(int(nxt[0]))
  return out


@pytest.mark.parametrize("name", ARCHS)
def test_logits_and_greedy_generation_match_transformers(name):
  model, params = _loaded(name)
  ref = np.load(os.path.join(FIXTURES, name, "reference.npz"))
  got = np.asarray(_logits(params, jnp.asarray(ref["inputs"], jnp.int32), model=model))
  np.testing.assert_allclose(got, ref["logits"], atol=1e-4, rtol=1e-4)
  for prompt, want in zip(ref["prompts"], ref["greedy"]):
    prompt = [int(t) for t in prompt if t >= 0]
    assert _greedy(model, params, prompt, len(want)) == want.tolist()


def test_architectures_read_from_config():
  qwen2, qwen3, llama = (hf.architecture(os.path.join(FIXTURES, n)) for n in ARCHS)
  assert qwen2["qkv_bias"] and not qwen2["qk_norm"] and qwen2["tie_embeddings"]
  assert qwen3["qk_norm"] and not qwen3["qkv_bias"]
  assert not llama["tie_embeddings"] and not llama["qkv_bias"]
  assert (llama["heads"], llama["kv_heads"], llama["head_dim"], llama["vocab_rows"]) == (4, 2, 8, 96)


@pytest.mark.parametrize("how", ["normal", "mean"])
def test_id_tokens_are_appended_rows(how):
  """ID rows come after the vocabulary (embedding and untied lm_head): the original rows
  are unchanged, the new ones initialised as asked, the prompt tokenised by the folder's
  tokenizer.json."""
  folder = os.path.join(FIXTURES, "llama")
  base = hf.to_params(hf.read_weights(folder), hf.architecture(folder))["params"]
  cfg, params = hf.load(folder, (4, 3), id_init=how, seed=1,
                        prompt=("here is the purchase history :", ",", "what is the next item ?"))
  p = params["params"]
  assert cfg.vocab_size == 96 + 7 and cfg.offsets == (96, 100) and p["id_embed"].shape == (7, 32)
  for name, ids in (("embed", "id_embed"), ("lm_head", "id_head")):
    np.testing.assert_array_equal(p[name], base[name])
    new = p[ids]
    if how == "mean":
      np.testing.assert_allclose(new, np.broadcast_to(base[name].mean(0), new.shape), rtol=1e-6)
    else:
      assert 0.05 < new.std() < 0.2                       # N(0, initializer_range = 0.1)
  tok = hf.tokenizer(folder)
  assert tok.decode(list(cfg.prompt_head)) == "here is the purchase history :"
  assert tok.decode(list(cfg.prompt_sep)) == "," and len(cfg.prompt_tail) == 6
  assert hf.id_tokens((2, 3)) == ["<a_0>", "<a_1>", "<b_0>", "<b_1>", "<b_2>"]


def test_broken_folders_name_the_file(tmp_path):
  folder = tmp_path / "m"
  shutil.copytree(os.path.join(FIXTURES, "qwen2"), folder)
  index = json.load(open(folder / "model.safetensors.index.json"))
  os.remove(folder / sorted(set(index["weight_map"].values()))[1])
  with pytest.raises(DataError, match="model-00002-of-00002.safetensors: file: missing"):
    hf.read_weights(str(folder))
  cfg = json.load(open(folder / "config.json"))
  json.dump({**cfg, "model_type": "gpt2"}, open(folder / "config.json", "w"))
  with pytest.raises(DataError, match="config.json: model_type: 'gpt2' is not one of"):
    hf.architecture(str(folder))
  json.dump({**cfg, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
            open(folder / "config.json", "w"))
  with pytest.raises(DataError, match="rope type 'llama3' is not supported"):
    hf.architecture(str(folder))
  weights = hf.read_weights(os.path.join(FIXTURES, "qwen2"))
  weights["model.layers.0.mlp.up_proj.weight"] = weights["model.layers.0.mlp.up_proj.weight"][:5]
  with pytest.raises(DataError, match=r"up_proj.weight: shape \(32, 5\), expected \(32, 64\)"):
    hf.to_params(weights, hf.architecture(os.path.join(FIXTURES, "qwen2")))


def test_lcrec_variant_trains_and_decodes_end_to_end(tmp_path, monkeypatch):
  """letter:tiny_lcrec: LETTER's tokenizer, then the tiny Qwen2 folder with ID tokens, the
  prompt and LoRA, trained with LC-Rec's loss and its item2index and index2item tasks (on
  titles given to the synthetic items) and decoded (constrained) with the usual results; the best
  checkpoint keeps every pretrained kernel and norm of the folder bit for bit."""
  import dataclasses
  sys.path.insert(0, os.path.join(os.path.dirname(FIXTURES), "..", "..", "configs"))
  import letter
  from jaxrec import pipeline
  load = pipeline.load_dataset
  words = ("the next item", "a user", "its id", "what is the purchase history")
  monkeypatch.setattr(pipeline, "load_dataset", lambda c: dataclasses.replace(
      load(c), item_text=[{"title": words[i % 4]} for i in range(load(c).n_items)]))
  cfg = letter.get_config("tiny_lcrec")
  cfg.data.align.tasks = ("item2index", "index2item")
  cfg.model.loss = "lm"                       # LC-Rec's recipe (tiger.lcrec_training)
  cfg.train.epochs = 1
  logs = []
  results = pipeline.train_and_evaluate(cfg, str(tmp_path), log=logs.append)
  # LC-Rec's share: every item once per epoch, ceil(64 x 120 items / 1,143 samples) = 7
  assert any(l.startswith("align: item2index, index2item, 7 items per batch of 64") for l in logs), logs
  assert 0 < results["parameters_trained"] < results["parameters"]
  assert 0.0 < results["test"]["recall@10"] <= 1.0
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  trained = [l for l in lines if "item2index" in l]
  assert trained and all(l["item2index"] > 0 and l["index2item"] > 0 for l in trained)
  run, params, _ = pipeline.load_run(str(tmp_path))
  folder = cfg.model.path
  base = hf.to_params(hf.read_weights(folder), hf.architecture(folder))["params"]
  p = params["params"]
  np.testing.assert_array_equal(np.asarray(p["blocks_1"]["attn"]["q"]["kernel"]),
                                base["blocks_1"]["attn"]["q"]["kernel"])
  np.testing.assert_array_equal(np.asarray(p["norm"]["scale"]), base["norm"]["scale"])
  assert np.any(np.asarray(p["blocks_1"]["attn"]["q"]["lora_b"]) != 0)    # the adapter trained
  assert not np.array_equal(np.asarray(p["embed"]), base["embed"])        # train_rows='all'
