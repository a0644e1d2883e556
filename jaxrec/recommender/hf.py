"""Pretrained LLaMA / Qwen2 / Qwen2.5 / Qwen3 decoders from a local Hugging Face folder,
as the decoder-only recommender (`recommender/decoder.py`) with semantic-ID tokens added.

A folder holds `config.json`, the weights as `model.safetensors` or shards listed in
`model.safetensors.index.json`, and `tokenizer.json` (read with HF `tokenizers`). Nothing is
ever downloaded: a missing or malformed file is a `DataError` naming it.

The ID tokens (`<a_12>`, `<b_7>`, ... one per code per level, LC-Rec's names) are rows
after the checkpoint's embedding rows (and `lm_head`'s when untied), held as parameters of
their own (`id_embed`, `id_head`). Their
initialisation (`id_init`):
  "normal"  N(0, initializer_range): what LC-Rec's `resize_token_embeddings` did (transformers
            before 4.46 initialised new rows with the model's `_init_weights`)
  "mean"    every new row the mean of the pretrained rows: what transformers >= 4.46 does by
            default (`mean_resizing`: a sample around that mean with 1e-9 x their covariance)
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from jaxrec.errors import DataError
from jaxrec.recommender.decoder import DecoderConfig

SUPPORTED = ("llama", "qwen2", "qwen3", "mistral")
LEVEL_NAMES = "abcdefghijklmnopqrstuvwxyz"


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    raise DataError(path, "file", "missing (a Hugging Face model folder needs config.json, "
                    "safetensors weights and tokenizer.json; nothing is downloaded)")
  try:
    return json.load(open(path))
  except json.JSONDecodeError as e:
    raise DataError(path, f"line {e.lineno}", f"not JSON ({e.msg})") from None


def read_config(folder: str) -> dict:
  return _read_json(os.path.join(folder, "config.json"))


def architecture(folder: str) -> dict:
  """The `DecoderConfig` fields of the folder's model (everything but the codes)."""
  path = os.path.join(folder, "config.json")
  c = read_config(folder)
  kind = c.get("model_type")
  if kind not in SUPPORTED:
    raise DataError(path, "model_type", f"{kind!r} is not one of {', '.join(SUPPORTED)}")
  if c.get("hidden_act", "silu") != "silu":
    raise DataError(path, "hidden_act", f"{c['hidden_act']!r}: only SwiGLU ('silu') decoders")
  rope = dict(c.get("rope_parameters") or {})
  scaling = c.get("rope_scaling") or {}
  for key, node in (("rope_parameters", rope), ("rope_scaling", scaling)):
    rope_type = node.get("rope_type") or node.get("type") or "default"
    if rope_type != "default":
      raise DataError(path, key, f"rope type {rope_type!r} is not supported (plain rotary "
                      "positions only)")
  if c.get("use_sliding_window"):
    raise DataError(path, "use_sliding_window", "sliding-window attention is not supported")
  for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
              "vocab_size"):
    if not isinstance(c.get(key), int):
      raise DataError(path, key, f"missing or not an integer: {c.get(key)!r}")
  heads = c["num_attention_heads"]
  return dict(
      d_model=c["hidden_size"], d_ff=c["intermediate_size"], heads=heads,
      kv_heads=c.get("num_key_value_heads") or heads,
      head_dim=c.get("head_dim") or c["hidden_size"] // heads, layers=c["num_hidden_layers"],
      dropout=0.0, mlp="swiglu", qkv_bias=kind == "qwen2" or bool(c.get("attention_bias")),
      qk_norm=kind == "qwen3", rope_theta=float(rope.get("rope_theta", c.get("rope_theta", 10000.0))),
      norm_eps=float(c.get("rms_norm_eps", 1e-6)), logit_scale=False,
      init_std=float(c.get("initializer_range", 0.02)), vocab_rows=c["vocab_size"],
      tie_embeddings=bool(c.get("tie_word_embeddings", False)))


def read_weights(folder: str) -> dict:
  """{name: numpy array} from `model.safetensors` or the shards of its index file."""
  from safetensors.numpy import load_file
  index = os.path.join(folder, "model.safetensors.index.json")
  if os.path.isfile(index):
    files = sorted(set(_read_json(index).get("weight_map", {}).values()))
    if not files:
      raise DataError(index, "weight_map", "empty")
  else:
    files = ["model.safetensors"]
  out = {}
  for name in files:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
      raise DataError(path, "file", "missing (listed by the folder's safetensors index)"
                      if len(files) > 1 else "missing: no model.safetensors nor an index")
    try:
      out.update(load_file(path))
    except Exception as e:   # (safetensors raises its own error types)
      raise DataError(path, "header", f"not a readable safetensors file ({e})") from None
  return out


def to_params(weights: dict, arch: dict, folder: str = "") -> dict:
  """The decoder's parameter tree {"params": ...} (float32) from HF names; every tensor the
  architecture needs must be there with its shape, and none may be left over."""
  where = folder or "weights"
  used = set()

  def take(name, shape, transpose=False):
    if name not in weights:
      raise DataError(where, name, "missing from the safetensors files")
    w = np.asarray(weights[name], np.float32)
    w = w.T if transpose else w
    if w.shape != tuple(shape):
      raise DataError(where, name, f"shape {w.shape}, expected {tuple(shape)}")
    used.add(name)
    return w

  d, f, e = arch["d_model"], arch["d_ff"], arch["head_dim"]
  q, kv, v = arch["heads"] * e, arch["kv_heads"] * e, arch["vocab_rows"]
  p = {"embed": take("model.embed_tokens.weight", (v, d)),
       "norm": {"scale": take("model.norm.weight", (d,))}}
  if not arch["tie_embeddings"]:
    p["lm_head"] = take("lm_head.weight", (v, d))
  for i in range(arch["layers"]):
    pre = f"model.layers.{i}."
    attn = {n: {"kernel": take(f"{pre}self_attn.{n}_proj.weight", shape, True)}
            for n, shape in (("q", (d, q)), ("k", (d, kv)), ("v", (d, kv)), ("o", (q, d)))}
    if arch["qkv_bias"]:
      for n, size in (("q", q), ("k", kv), ("v", kv)):
        attn[f"{n}_bias"] = take(f"{pre}self_attn.{n}_proj.bias", (size,))
    if arch["qk_norm"]:
      for n in ("q", "k"):
        attn[f"{n}_norm"] = {"scale": take(f"{pre}self_attn.{n}_norm.weight", (e,))}
    mlp = {n: {"kernel": take(f"{pre}mlp.{n}_proj.weight", shape, True)}
           for n, shape in (("gate", (d, f)), ("up", (d, f)), ("down", (f, d)))}
    p[f"blocks_{i}"] = {"attn": attn, "mlp": mlp,
                        "norm1": {"scale": take(f"{pre}input_layernorm.weight", (d,))},
                        "norm2": {"scale": take(f"{pre}post_attention_layernorm.weight", (d,))}}
  left = sorted(set(weights) - used - {"lm_head.weight"} if arch["tie_embeddings"]
                else set(weights) - used)
  if left:
    raise DataError(where, left[0], f"a tensor this architecture does not have ({len(left)} "
                    "such)")
  return {"params": p}


def id_tokens(level_sizes) -> list[str]:
  """The ID tokens' strings, level by level: <a_0> .. <a_{K-1}>, <b_0>, ..."""
  return [f"<{LEVEL_NAMES[l]}_{k}>" for l, size in enumerate(level_sizes) for k in range(size)]


def add_id_rows(params: dict, n_rows: int, how: str, std: float, seed: int) -> dict:
  """`params` with `n_rows` ID-token rows after the embedding's (`id_embed`) and, untied,
  `lm_head`'s (`id_head`): parameters of their own, so that they may train alone."""
  rng = np.random.default_rng(seed)
  p = dict(params["params"])
  for name, ids in (("embed", "id_embed"), ("lm_head", "id_head")):
    if name not in p:
      continue
    old = np.asarray(p[name])
    if how == "normal":
      new = rng.normal(0.0, std, (n_rows, old.shape[1]))
    elif how == "mean":
      new = np.broadcast_to(old.mean(0), (n_rows, old.shape[1]))
    else:
      raise ValueError(f"model.id_init={how!r}: must be 'normal' or 'mean'")
    p[ids] = new.astype(old.dtype)
  return {"params": p}


def tokenizer(folder: str):
  """The folder's HF `tokenizers` tokenizer."""
  from tokenizers import Tokenizer
  path = os.path.join(folder, "tokenizer.json")
  if not os.path.isfile(path):
    raise DataError(path, "file", "missing (the prompt is tokenised with it)")
  try:
    return Tokenizer.from_file(path)
  except Exception as e:
    raise DataError(path, "file", f"not a tokenizers file ({e})") from None


def eos_id(folder: str) -> int:
  """The end-of-sequence token id: config.json's (or generation_config.json's)
  `eos_token_id`, the first where it is a list."""
  for name in ("config.json", "generation_config.json"):
    path = os.path.join(folder, name)
    eos = _read_json(path).get("eos_token_id") if os.path.isfile(path) else None
    if isinstance(eos, list):
      eos = eos[0] if eos else None
    if isinstance(eos, int):
      return eos
  raise DataError(os.path.join(folder, "config.json"), "eos_token_id",
                  "missing (here and in generation_config.json): the title's end is a token")


def prompt_ids(folder: str, head: str, sep: str, tail: str) -> tuple:
  """(head, separator, tail) token ids of a prompt template, each part tokenised on its own
  as HF tokenizers split text at added tokens (the ID tokens); the head with the
  tokenizer's special tokens (LLaMA's <s>), the others without."""
  tok = tokenizer(folder)
  enc = lambda text, special=False: (tuple(tok.encode(text, add_special_tokens=special).ids)
                                     if text else ())
  return enc(head, True), enc(sep), enc(tail)


def decoder_config(folder: str, level_sizes=(), dtype: str = "float32", prompt=("", "", ""),
                   **options) -> DecoderConfig:
  """The `DecoderConfig` of the folder's model with ID tokens for codes of `level_sizes`
  after its vocabulary, the prompt (head, separator, tail) tokenised, and `options` (LoRA,
  `id_init`, `user_buckets`, ...)."""
  head, sep, tail = prompt_ids(folder, *prompt) if any(prompt) else ((), (), ())
  if options.get("loss") == "lm":
    options = dict(options, eos=eos_id(folder))
  return DecoderConfig(level_sizes=tuple(int(s) for s in level_sizes), dtype=dtype,
                       prompt_head=head, prompt_sep=sep, prompt_tail=tail, path=folder,
                       **options, **architecture(folder))


def model_folder(path: str) -> str:
  """`config.model.path` as a folder: `~` and environment variables expanded."""
  return os.path.expandvars(os.path.expanduser(path))


def model_config(model_cfg, level_sizes, dtype: str = "float32") -> DecoderConfig:
  """The `DecoderConfig` of a `config.model` with a `path` (`configs/tiger.py:llm_model_config`):
  the folder's architecture, the config's prompt, LoRA and ID-row settings."""
  m = model_cfg.to_dict()
  folder = model_folder(m.pop("path"))
  prompt = (m.pop("prompt_head"), m.pop("prompt_sep"), m.pop("prompt_tail"))
  m.pop("kind", None)
  if "lora_targets" in m:
    m["lora_targets"] = tuple(m["lora_targets"])
  return decoder_config(folder, level_sizes, dtype, prompt, **m)


def pretrained_params(cfg: DecoderConfig, init_params: dict, seed: int) -> dict:
  """`init_params` (the decoder's own initialisation: LoRA adapters, user rows) with the
  folder's weights and the ID rows (`cfg.id_init`) in place of the rest."""
  loaded = to_params(read_weights(cfg.path), architecture(cfg.path), cfg.path)
  if sum(cfg.level_sizes):
    loaded = add_id_rows(loaded, sum(cfg.level_sizes), cfg.id_init, cfg.init_std, seed)
  placed = []

  def put(path, leaf):
    node = loaded
    for key in path:
      name = getattr(key, "key", None)
      if not isinstance(node, dict) or name not in node:
        return leaf
      node = node[name]
    if np.shape(node) != leaf.shape:
      raise DataError(cfg.path, jax.tree_util.keystr(path),
                      f"shape {np.shape(node)}, the model needs {leaf.shape}")
    placed.append(path)
    return np.asarray(node, leaf.dtype)
  out = jax.tree_util.tree_map_with_path(put, init_params)
  if len(placed) != len(jax.tree.leaves(loaded)):     # (a naming mismatch, never silent)
    raise ValueError(f"{cfg.path}: {len(jax.tree.leaves(loaded))} pretrained tensors, "
                     f"{len(placed)} placed in the model")
  return out


def load(folder: str, level_sizes=(), id_init: str = "normal", seed: int = 0, **kw):
  """(DecoderConfig, parameters) of the folder's model with its ID-token rows added."""
  cfg = decoder_config(folder, level_sizes, id_init=id_init, **kw)
  params = to_params(read_weights(folder), architecture(folder), folder)
  if sum(cfg.level_sizes):
    params = add_id_rows(params, sum(cfg.level_sizes), id_init, cfg.init_std, seed)
  return cfg, params
