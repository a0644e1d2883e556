"""A Flax BERT-family sentence encoder that loads a local sentence-transformers folder.

The architecture of BERT / MiniLM (`model_type` "bert"): word + absolute position +
token-type embeddings and a LayerNorm, post-LN encoder blocks (self-attention, then a GELU
feed-forward, each followed by residual + LayerNorm), then the folder's pooling (mean over
real tokens, CLS or max, from `1_Pooling/config.json`) and L2 normalisation when
`modules.json` lists a Normalize module. Weights come from `model.safetensors` (the
`safetensors` package, no torch), the WordPiece tokenizer from `tokenizer.json` (HF
`tokenizers`), the truncation length from `sentence_bert_config.json`. Nothing is
downloaded: a folder path is given.

Shape letters: B batch, T tokens, E width, H heads, V vocabulary.
"""
from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.errors import ModelFolderError

SUPPORTED = ("bert",)
POOLING = ("mean", "cls", "max")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int
  hidden: int
  layers: int
  heads: int
  intermediate: int
  max_positions: int
  type_vocab: int
  eps: float
  act: str = "gelu"          # gelu (exact, erf) | gelu_new (tanh approximation)
  pooling: str = "mean"
  normalize: bool = True
  max_seq_length: int = 256


class Layer(nn.Module):
  cfg: BertConfig

  @nn.compact
  def __call__(self, x_BxTxE, bias_Bx1x1xT):
    cfg = self.cfg
    dh = cfg.hidden // cfg.heads
    def heads(name):
      y = nn.Dense(cfg.hidden, name=name)(x_BxTxE)
      return y.reshape(y.shape[:2] + (cfg.heads, dh))
    q, k, v = heads("query"), heads("key"), heads("value")
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dh) + bias_Bx1x1xT
    ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
    attn = nn.Dense(cfg.hidden, name="attn_out")(ctx.reshape(x_BxTxE.shape))
    x = nn.LayerNorm(epsilon=cfg.eps, name="attn_ln")(x_BxTxE + attn)
    h = nn.Dense(cfg.intermediate, name="inter")(x)
    h = jax.nn.gelu(h, approximate=cfg.act != "gelu")
    return nn.LayerNorm(epsilon=cfg.eps, name="out_ln")(x + nn.Dense(cfg.hidden, name="out")(h))


class SentenceEncoder(nn.Module):
  cfg: BertConfig

  @nn.compact
  def __call__(self, ids_BxT, mask_BxT):
    """Sentence vectors [B, E] (pooled over the real tokens, normalised if configured)."""
    cfg = self.cfg
    t = ids_BxT.shape[1]
    x = (nn.Embed(cfg.vocab_size, cfg.hidden, name="word")(ids_BxT)
         + nn.Embed(cfg.max_positions, cfg.hidden, name="position")(jnp.arange(t))[None]
         + nn.Embed(cfg.type_vocab, cfg.hidden, name="token_type")(jnp.zeros_like(ids_BxT)))
    x = nn.LayerNorm(epsilon=cfg.eps, name="embed_ln")(x)
    # padded keys get a large negative bias (as HF: the dtype's minimum)
    bias = jnp.where(mask_BxT, 0.0, jnp.finfo(x.dtype).min)[:, None, None, :]
    for i in range(cfg.layers):
      x = Layer(cfg, name=f"layer{i}")(x, bias)
    m = mask_BxT[..., None].astype(x.dtype)
    if cfg.pooling == "mean":
      v = jnp.sum(x * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
    elif cfg.pooling == "cls":
      v = x[:, 0]
    else:
      v = jnp.max(jnp.where(m > 0, x, jnp.finfo(x.dtype).min), axis=1)
    if cfg.normalize:
      v = v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    return v


def _read_json(path, what):
  if not os.path.exists(path):
    raise ModelFolderError(f"{path}: not found ({what}); is the folder a sentence-transformers "
                           "model (config.json, model.safetensors, tokenizer.json, modules.json, "
                           "1_Pooling/config.json)?")
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ModelFolderError(f"{path}: not valid JSON ({e})") from None


def read_config(folder: str) -> BertConfig:
  """The encoder's config from a sentence-transformers folder, with clear errors."""
  folder = os.path.expanduser(folder)
  if not os.path.isdir(folder):
    raise ModelFolderError(f"{folder}: model folder not found (give the path of a local "
                           "sentence-transformers folder; nothing is downloaded)")
  c = _read_json(os.path.join(folder, "config.json"), "the transformer's config")
  if c.get("model_type") not in SUPPORTED:
    raise ModelFolderError(f"{os.path.join(folder, 'config.json')}: model_type "
                           f"{c.get('model_type')!r} is not supported (supported: {SUPPORTED}: "
                           "BERT / MiniLM sentence encoders)")
  if c.get("position_embedding_type", "absolute") != "absolute":
    raise ModelFolderError(f"{os.path.join(folder, 'config.json')}: position_embedding_type "
                           f"{c['position_embedding_type']!r} is not supported (absolute only)")
  act = c.get("hidden_act", "gelu")
  if act not in ("gelu", "gelu_new"):
    raise ModelFolderError(f"{os.path.join(folder, 'config.json')}: hidden_act {act!r} is not "
                           "supported (gelu, gelu_new)")
  modules = _read_json(os.path.join(folder, "modules.json"), "the module list")
  types = [m.get("type", "") for m in modules] if isinstance(modules, list) else []
  if not any(t.endswith("models.Pooling") for t in types):
    raise ModelFolderError(f"{os.path.join(folder, 'modules.json')}: lists no Pooling module")
  pool_dir = next(m.get("path", "1_Pooling") for m in modules if m.get("type", "").endswith("Pooling"))
  p = _read_json(os.path.join(folder, pool_dir, "config.json"), "the pooling config")
  modes = [name for name, key in (("mean", "pooling_mode_mean_tokens"),
                                  ("cls", "pooling_mode_cls_token"),
                                  ("max", "pooling_mode_max_tokens")) if p.get(key)]
  other = [k for k, v in p.items() if k.startswith("pooling_mode") and v and k not in (
      "pooling_mode_mean_tokens", "pooling_mode_cls_token", "pooling_mode_max_tokens")]
  if len(modes) != 1 or other:
    raise ModelFolderError(f"{os.path.join(folder, pool_dir, 'config.json')}: exactly one of "
                           f"mean / cls / max pooling is supported, got {modes + other}")
  sb_path = os.path.join(folder, "sentence_bert_config.json")
  max_seq = _read_json(sb_path, "max_seq_length").get("max_seq_length") if os.path.exists(
      sb_path) else None
  max_seq = int(max_seq or c.get("max_position_embeddings", 512))
  return BertConfig(vocab_size=c["vocab_size"], hidden=c["hidden_size"],
                    layers=c["num_hidden_layers"], heads=c["num_attention_heads"],
                    intermediate=c["intermediate_size"],
                    max_positions=c["max_position_embeddings"],
                    type_vocab=c.get("type_vocab_size", 2), eps=c.get("layer_norm_eps", 1e-12),
                    act=act, pooling=modes[0],
                    normalize=any(t.endswith("models.Normalize") for t in types),
                    max_seq_length=min(max_seq, c["max_position_embeddings"]))


def load_params(folder: str, cfg: BertConfig) -> dict:
  """model.safetensors (HF BERT names, with or without a `bert.` prefix) -> Flax params."""
  from safetensors.numpy import load_file
  path = os.path.join(os.path.expanduser(folder), "model.safetensors")
  if not os.path.exists(path):
    raise ModelFolderError(f"{path}: not found (the weights; only safetensors are read, "
                           "never pickled .bin files)")
  raw = {k[5:] if k.startswith("bert.") else k: v for k, v in load_file(path).items()}

  def get(name):
    if name not in raw:
      raise ModelFolderError(f"{path}: tensor {name!r} is missing (not a BERT checkpoint?)")
    return jnp.asarray(raw[name], jnp.float32)

  def dense(prefix):   # torch Linear stores [out, in]
    return {"kernel": get(prefix + ".weight").T, "bias": get(prefix + ".bias")}

  def ln(prefix):
    return {"scale": get(prefix + ".weight"), "bias": get(prefix + ".bias")}

  e = "embeddings."
  params = {"word": {"embedding": get(e + "word_embeddings.weight")},
            "position": {"embedding": get(e + "position_embeddings.weight")},
            "token_type": {"embedding": get(e + "token_type_embeddings.weight")},
            "embed_ln": ln(e + "LayerNorm")}
  for i in range(cfg.layers):
    l = f"encoder.layer.{i}."
    params[f"layer{i}"] = {
        "query": dense(l + "attention.self.query"), "key": dense(l + "attention.self.key"),
        "value": dense(l + "attention.self.value"), "attn_out": dense(l + "attention.output.dense"),
        "attn_ln": ln(l + "attention.output.LayerNorm"), "inter": dense(l + "intermediate.dense"),
        "out": dense(l + "output.dense"), "out_ln": ln(l + "output.LayerNorm")}
  if params["word"]["embedding"].shape != (cfg.vocab_size, cfg.hidden):
    raise ModelFolderError(f"{path}: word embeddings {params['word']['embedding'].shape} do not "
                           f"match config.json ({cfg.vocab_size}, {cfg.hidden})")
  return {"params": params}


def load_tokenizer(folder: str, max_len: int):
  """The folder's HF `tokenizers` tokenizer, truncating to `max_len` tokens (with the
  special tokens), no padding (batches are padded to length buckets by the caller)."""
  from tokenizers import Tokenizer
  path = os.path.join(os.path.expanduser(folder), "tokenizer.json")
  if not os.path.exists(path):
    raise ModelFolderError(f"{path}: not found (the fast tokenizer file)")
  try:
    tok = Tokenizer.from_file(path)
  except Exception as e:  # the Rust library raises its own exception type
    raise ModelFolderError(f"{path}: not a readable tokenizers file ({e})") from None
  tok.enable_truncation(max_length=max_len)
  tok.no_padding()
  return tok


def fingerprint_files(folder: str) -> list:
  """What identifies a model folder: the name, size and a sha256 of each file it reads."""
  import hashlib
  folder = os.path.expanduser(folder)
  out = []
  for root, _, files in sorted(os.walk(folder)):
    for name in sorted(files):
      if name.endswith((".json", ".safetensors", ".txt")):
        path = os.path.join(root, name)
        h = hashlib.sha256()
        with open(path, "rb") as f:
          for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        out.append((os.path.relpath(path, folder), h.hexdigest()))
  return out
