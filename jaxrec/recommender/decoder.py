"""A decoder-only (causal) recommender over semantic-ID codes: GRID's decoder-only TIGER
(one sequence: the history's codes, BOS, then the target's codes), built from LLaMA's
block (Flax Linen, used through `apply`).

Pre-norm RMSNorm, rotary positions (HF LLaMA's rotate-half convention), attention scaled
by head_dim^-0.5 with optional grouped key/value heads and q/k/v biases (Qwen2), a SwiGLU
(LLaMA) or ReLU feed-forward, dropout on the residual branches and attention weights (0
for an LLM). One embedding table holds every level's codes at per-level offsets and a BOS
row; the output head is the tied table's level-l rows at the position that predicts
level l (a softmax per level, as the T5's "level" head). Padding: histories are
left-aligned (real items, then padding); padded positions are masked as keys and skipped
by the rotary positions (each real token's position counts the real tokens before it),
so a padded sequence computes what the unpadded one would.

The same module is a pretrained LLaMA / Qwen2 / Qwen3 decoder (`recommender/hf.py` maps a
Hugging Face folder onto it): the code tokens are rows appended after its vocabulary, the
prompt's token ids (`prompt_head`, `prompt_sep`, `prompt_tail`) frame the history, and
its own output table (`lm_head`) may be untied.

Decoding (`prefix` then `decode_step`): the prefix (user token, history, BOS) runs once per
user, leaving each layer's keys and values [H, T, E] (the T5's cross-attention cache has
the same role) and the first level's hidden state; each later code is one cached
position, its keys and values one [W, H, E] array per position (as the T5 decoder's
`Attention.attend_cached`).

Shape letters: B batch, S sequence, T prefix tokens, C code levels, K codes per level
(padded), D d_model, H heads, G key/value heads, E head width, F d_ff, W beams.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.recommender.t5_layers import NEG, Dropout, RMSNorm, matmul


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  level_sizes: tuple[int, ...]     # codes per level of the item code table
  d_model: int = 128
  d_ff: int = 1024
  heads: int = 6
  kv_heads: int = 0                # grouped-query attention: key/value heads (0: = heads)
  head_dim: int = 64
  layers: int = 8
  dropout: float = 0.1
  mlp: str = "swiglu"              # "swiglu" (LLaMA / Qwen) | "relu"
  qkv_bias: bool = False           # biases on q/k/v (Qwen2)
  rope_theta: float = 10000.0
  norm_eps: float = 1e-6
  user_buckets: int = 0            # hashed user token before the history; 0: none
  loss: str = "target"             # "target": the target's codes | "all": every code (the
                                   # history's next codes too, each against its level) | "lm"
                                   # (an LLM): the target's codes and EOS over the whole
                                   # vocabulary, as LC-Rec's LM loss on the response
  eos: int = -1                    # an LLM's end-of-sequence token (loss "lm")
  logit_scale: bool = True         # logits = (h x d^-0.5) . e (tied); False: h . e
  init_std: float = 0.02           # every weight N(0, init_std) (LLaMA's initializer_range)
  dtype: str = "float32"           # compute dtype (train.dtype), float32 parameters
  # a pretrained LLM (`recommender/hf.py`): its vocabulary's rows come first and the code
  # tokens after them; the prompt's token ids frame the history's codes
  vocab_rows: int = 0              # rows before the code tokens (0: none, and a BOS row after)
  tie_embeddings: bool = True      # False: an output table `lm_head` of its own (LLaMA)
  qk_norm: bool = False            # RMSNorm over each head's queries and keys (Qwen3)
  prompt_head: tuple = ()          # token ids before the history
  prompt_sep: tuple = ()           # token ids after each history item's codes
  prompt_tail: tuple = ()          # token ids after the history; () -> (BOS,)
  path: str = ""                   # the Hugging Face folder its weights come from ("": none)
  id_init: str = "normal"          # the ID rows' initialisation (`hf.add_id_rows`)
  # LoRA (Hu et al. 2021, as peft's LoraConfig): each targeted projection computes
  # x W + (alpha / rank) dropout(x) A B, W frozen, A ~ U(+-1/sqrt(in)) and B = 0 at the start
  lora_rank: int = 0               # 0: full fine-tuning (every parameter trains)
  lora_alpha: float = 16.0
  lora_dropout: float = 0.0
  lora_targets: tuple = ("q", "k", "v", "o", "gate", "up", "down")
  train_rows: str = "all"          # with LoRA, which embedding rows train: "all" (LC-Rec's
                                   # modules_to_save: embed and lm_head) | "ids" (the ID rows)

  @property
  def compute(self):
    return jnp.dtype(self.dtype)

  @property
  def groups(self) -> int:
    return self.heads // (self.kv_heads or self.heads)

  @property
  def logit_mult(self) -> float:
    return self.d_model ** -0.5 if self.logit_scale else 1.0

  @property
  def levels(self) -> int:
    return len(self.level_sizes)

  @property
  def offsets(self) -> tuple[int, ...]:
    return tuple(self.vocab_rows + int(x) for x in np.cumsum((0,) + tuple(self.level_sizes))[:-1])

  @property
  def bos(self) -> int:
    """The row that ends the prefix of the from-scratch model (the row after the codes);
    an LLM's prompt ends with its `prompt_tail` instead."""
    return self.vocab_rows + int(sum(self.level_sizes))

  @property
  def tail(self) -> tuple:
    return tuple(self.prompt_tail) or (self.bos,)

  @property
  def k_max(self) -> int:
    return max(self.level_sizes)

  @property
  def vocab_size(self) -> int:
    return self.bos + (0 if self.vocab_rows else 1)


def model_config(model_cfg, level_sizes, dtype: str = "float32") -> DecoderConfig:
  """Frozen architecture from a `config.model` ConfigDict (kind 'decoder'), the code
  table's level sizes and the compute dtype (`train.dtype`)."""
  d = {k: v for k, v in model_cfg.to_dict().items() if k != "kind"}
  return DecoderConfig(level_sizes=tuple(int(s) for s in level_sizes), dtype=dtype, **d)


def rope(x_SxHxE, pos_S, theta: float):
  """Rotary position embedding, HF LLaMA's convention (the two halves of each head rotate
  together: x cos + rotate_half(x) sin). `pos_S` broadcasts against x's leading axes."""
  e = x_SxHxE.shape[-1]
  inv = 1.0 / (theta ** (np.arange(0, e, 2, dtype=np.float32) / e))
  ang = pos_S.astype(jnp.float32)[..., None] * inv                    # [..., S, E/2]
  cos = jnp.concatenate([jnp.cos(ang)] * 2, -1)[..., None, :]
  sin = jnp.concatenate([jnp.sin(ang)] * 2, -1)[..., None, :]
  x = x_SxHxE.astype(jnp.float32)
  half = jnp.concatenate([-x[..., e // 2:], x[..., :e // 2]], -1)
  return (x * cos + half * sin).astype(x_SxHxE.dtype)


class Linear(nn.Module):
  """A bias-free projection (parameter "kernel" [in, out], as `Projection`); when the
  config's LoRA targets it, the kernel is frozen (no gradient is computed for it) and the
  low-rank `lora_a` [in, r] and `lora_b` [r, out] train."""
  cfg: DecoderConfig
  in_features: int
  features: int
  target: str

  @nn.compact
  def __call__(self, x, train: bool = False):
    c = self.cfg
    w = self.param("kernel", nn.initializers.normal(c.init_std), (self.in_features, self.features))
    x = x.astype(c.compute)
    if not (c.lora_rank and self.target in c.lora_targets):
      return matmul(x, w.astype(c.compute))
    bound = self.in_features ** -0.5              # peft: kaiming_uniform(a=sqrt(5)) on A
    a = self.param("lora_a", lambda key, shape: jax.random.uniform(key, shape, jnp.float32,
                                                                   -bound, bound),
                   (self.in_features, c.lora_rank))
    b = self.param("lora_b", nn.initializers.zeros, (c.lora_rank, self.features))
    y = jnp.dot(x, jax.lax.stop_gradient(w).astype(c.compute))
    h = jnp.dot(Dropout(c.lora_dropout)(x, deterministic=not train), a.astype(c.compute))
    return y + jnp.dot(h, b.astype(c.compute)) * jnp.asarray(c.lora_alpha / c.lora_rank, c.compute)


class CausalAttention(nn.Module):
  cfg: DecoderConfig

  def setup(self):
    c = self.cfg
    kv = (c.kv_heads or c.heads) * c.head_dim
    self.q = Linear(c, c.d_model, c.heads * c.head_dim, "q")
    self.k = Linear(c, c.d_model, kv, "k")
    self.v = Linear(c, c.d_model, kv, "v")
    self.o = Linear(c, c.heads * c.head_dim, c.d_model, "o")
    if c.qk_norm:
      self.q_norm, self.k_norm = RMSNorm(c.norm_eps), RMSNorm(c.norm_eps)
    if c.qkv_bias:
      zeros = nn.initializers.zeros
      self.q_bias = self.param("q_bias", zeros, (c.heads * c.head_dim,))
      self.k_bias = self.param("k_bias", zeros, (kv,))
      self.v_bias = self.param("v_bias", zeros, (kv,))
    self.drop = Dropout(c.dropout)

  def qkv(self, x_SxD, pos_S, train: bool = False):
    """Rotated queries [..., S, H, E], keys and values [..., S, H, E] (key/value heads
    repeated to H)."""
    c = self.cfg
    q, k, v = self.q(x_SxD, train), self.k(x_SxD, train), self.v(x_SxD, train)
    if c.qkv_bias:
      q, k, v = (a + b.astype(a.dtype) for a, b in ((q, self.q_bias), (k, self.k_bias),
                                                     (v, self.v_bias)))
    split = lambda a: a.reshape(a.shape[:-1] + (-1, c.head_dim))
    q, k, v = split(q), split(k), split(v)
    if c.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    q, k = rope(q, pos_S, c.rope_theta), rope(k, pos_S, c.rope_theta)
    if c.groups > 1:
      k, v = jnp.repeat(k, c.groups, axis=-2), jnp.repeat(v, c.groups, axis=-2)
    return q * jnp.asarray(c.head_dim ** -0.5, q.dtype), k, v

  def __call__(self, x_BxSxD, pos_BxS, bias_BxHxSxS, train: bool):
    """Teacher-forced attention; also returns the keys and values [B, S, H, E]."""
    q, k, v = self.qkv(x_BxSxD, pos_BxS, train)
    s = jnp.einsum("bqhe,bkhe->bhqk", q, k).astype(jnp.float32) + bias_BxHxSxS
    w = self.drop(jax.nn.softmax(s, axis=-1).astype(q.dtype), deterministic=not train)
    out = jnp.einsum("bhqk,bkhe->bqhe", w, v)
    return self.o(out.reshape(out.shape[:-2] + (-1,)), train), (k, v)

  def step(self, x_WxD, pos, prefix_kv, prefix_bias_T, cache):
    """One new position of W beams over the prefix's keys/values [H, T, E] and the cached
    positions (tuples of [W or 1, H, E]). Returns (output [W, D], the cache with this
    position appended)."""
    q, k, v = self.qkv(x_WxD, pos)                                         # [W, H, E]
    ks, vs = cache[0] + (k,), cache[1] + (v,)
    s_pre = jnp.einsum("whe,hte->wht", q, prefix_kv[0]).astype(jnp.float32) + prefix_bias_T
    s_new = jnp.stack([jnp.sum((q * kp).astype(jnp.float32), -1) for kp in ks], -1)
    w = jax.nn.softmax(jnp.concatenate([s_pre, s_new], -1), axis=-1).astype(q.dtype)
    t = prefix_kv[0].shape[1]
    out = jnp.einsum("wht,hte->whe", w[..., :t], prefix_kv[1])
    out = out + sum(w[..., t + p, None] * vp for p, vp in enumerate(vs))
    return self.o(out.reshape(out.shape[0], -1)), (ks, vs)


class MLP(nn.Module):
  cfg: DecoderConfig

  @nn.compact
  def __call__(self, x, train: bool):
    c = self.cfg
    up = Linear(c, c.d_model, c.d_ff, "up", name="up")(x, train)
    if c.mlp == "swiglu":
      h = nn.silu(Linear(c, c.d_model, c.d_ff, "gate", name="gate")(x, train)) * up
    else:
      h = nn.relu(up)
    h = Dropout(c.dropout)(h, deterministic=not train)
    return Linear(c, c.d_ff, c.d_model, "down", name="down")(h, train)


class Block(nn.Module):
  cfg: DecoderConfig

  def setup(self):
    self.norm1 = RMSNorm(self.cfg.norm_eps)
    self.norm2 = RMSNorm(self.cfg.norm_eps)
    self.attn = CausalAttention(self.cfg)
    self.mlp = MLP(self.cfg)
    self.drop = Dropout(self.cfg.dropout)

  def __call__(self, x, pos, bias, train: bool):
    a, kv = self.attn(self.norm1(x), pos, bias, train)
    x = x + self.drop(a, deterministic=not train)
    return x + self.drop(self.mlp(self.norm2(x), train), deterministic=not train), kv

  def step(self, x_WxD, pos, prefix_kv, prefix_bias_T, cache):
    a, cache = self.attn.step(self.norm1(x_WxD), pos, prefix_kv, prefix_bias_T, cache)
    x = x_WxD + a
    return x + self.mlp(self.norm2(x), False), cache


class Decoder(nn.Module):
  cfg: DecoderConfig

  def setup(self):
    c = self.cfg
    init = nn.initializers.normal(c.init_std)
    # an LLM's pretrained rows and the ID rows are separate parameters (one may train
    # without the other); the from-scratch model has one table
    rows = c.vocab_rows or c.vocab_size
    self.embed = self.param("embed", init, (rows, c.d_model))
    n_ids = c.vocab_size - rows
    if n_ids:
      self.id_embed = self.param("id_embed", init, (n_ids, c.d_model))
    if not c.tie_embeddings:
      self.lm_head = self.param("lm_head", init, (rows, c.d_model))
      if n_ids:
        self.id_head = self.param("id_head", init, (n_ids, c.d_model))
    if c.user_buckets:
      self.user_embed = self.param("user_embed", init, (c.user_buckets, c.d_model))
    self.blocks = [Block(c) for _ in range(c.layers)]
    self.norm = RMSNorm(c.norm_eps)
    self.drop = Dropout(c.dropout)

  def input_table(self):
    """[V, D]: the embedding, ID rows after the pretrained ones."""
    return self._rows(self.embed, "id_embed")

  def output_table(self):
    """[V, D]: the tied embedding, or `lm_head` (with its ID rows)."""
    if self.cfg.tie_embeddings:
      return self.input_table()
    return self._rows(self.lm_head, "id_head")

  def _rows(self, table, ids: str):
    return jnp.concatenate([table, getattr(self, ids)]) if self.cfg.vocab_size > table.shape[0] else table

  def level_tables(self):
    """Output tables [C, K, D]: level l's rows of the output table (zero-padded to K)."""
    c = self.cfg
    out = self.output_table()
    rows = [jnp.pad(out[o:o + k].astype(c.compute), ((0, c.k_max - k), (0, 0)))
            for o, k in zip(c.offsets, c.level_sizes)]
    return jnp.stack(rows)

  def vocab_logits(self, hidden_xD):
    """Logits over the whole vocabulary (float32): an LLM's next-token distribution."""
    c = self.cfg
    return ((hidden_xD * c.logit_mult) @ self.output_table().astype(c.compute).T).astype(jnp.float32)

  def inputs(self, tokens_BxS, mask_BxS, user_B=None):
    """Input vectors [B, S(+1), D] and mask, the user token first (if any)."""
    c = self.cfg
    x = self.embed_rows(tokens_BxS)
    if c.user_buckets and user_B is not None:
      u = self.user_embed[jnp.mod(user_B, c.user_buckets)][:, None, :].astype(c.compute)
      x = jnp.concatenate([u, x], axis=1)
      mask_BxS = jnp.concatenate([jnp.ones_like(mask_BxS[:, :1]), mask_BxS], axis=1)
    return x, mask_BxS

  def embed_rows(self, tokens):
    """Input vectors of token ids (any shape), in the compute dtype."""
    return self.input_table()[tokens].astype(self.cfg.compute)

  def __call__(self, tokens_BxS, mask_BxS, user_B=None, train: bool = False):
    """Hidden states [B, S', D] (S' = S + 1 with a user token), each layer's keys and values
    [B, S', H, E], and the mask [B, S']."""
    return self.run(*self.inputs(tokens_BxS, mask_BxS, user_B), train)

  def run(self, x, mask, train: bool = False):
    """`__call__` from input vectors [B, S, D] (token rows, or SIIT's soft item tokens).
    Positions count real tokens; a position attends to the real positions up to itself."""
    x = x.astype(self.cfg.compute)
    s = x.shape[1]
    pos = jnp.cumsum(mask, axis=1) - 1
    causal = np.tril(np.ones((s, s), bool))
    bias = jnp.where(causal[None, None] & mask[:, None, None, :], 0.0, NEG)
    x = self.drop(x, deterministic=not train)
    kvs = []
    for block in self.blocks:
      x, kv = block(x, pos, bias, train)
      kvs.append(kv)
    return self.drop(self.norm(x), deterministic=not train), kvs, mask

  def logits(self, hidden_BxSxD, levels_S):
    """Logits [B, S, K] of each position against its level's codes (`levels_S`: a static
    numpy array); padding codes get NEG."""
    c = self.cfg
    tables = self.level_tables()[levels_S]                                 # [S, K, D]
    logits = (jnp.einsum("bsd,skd->bsk", hidden_BxSxD, tables) * c.logit_mult).astype(jnp.float32)
    valid = np.arange(c.k_max)[None, :] < np.asarray(c.level_sizes)[levels_S][:, None]
    return jnp.where(valid[None], logits, NEG)

  def prefix(self, tokens_BxT, mask_BxT, user_B=None):
    """The prefix pass for decoding (tokens end with BOS): (the last position's hidden state
    [B, D], per layer (keys, values) [B, H, T', E], the key bias [B, T'] and the position
    of the first decoded code [B])."""
    return self.prefix_vectors(*self.inputs(tokens_BxT, mask_BxT, user_B))

  def prefix_vectors(self, x_BxTxD, mask_BxT):
    """`prefix` from input vectors."""
    hidden, kvs, mask = self.run(x_BxTxD, mask_BxT, False)
    heads_first = lambda a: jnp.swapaxes(a, 1, 2)
    kvs = [(heads_first(k), heads_first(v)) for k, v in kvs]
    return hidden[:, -1], kvs, jnp.where(mask, 0.0, NEG), jnp.sum(mask, axis=1)

  def decode_step(self, tokens_W, pos, cache, prefix_kv, prefix_bias_T):
    """One decoded position (scalar `pos`) for W beams of one user: (hidden [W, D], the
    cache with this position appended)."""
    x = self.embed_rows(tokens_W)
    new_cache = []
    for block, layer_cache, kv in zip(self.blocks, cache, prefix_kv):
      x, layer_cache = block.step(x, pos, kv, prefix_bias_T, layer_cache)
      new_cache.append(layer_cache)
    return self.norm(x), new_cache


def empty_cache(cfg: DecoderConfig):
  """The decoded positions' key/value cache before any: per layer a pair of empty tuples."""
  return [((), ()) for _ in range(cfg.layers)]
