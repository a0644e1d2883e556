"""The T5 recommender's configuration (`T5Config`) and its layers: pre-norm RMSNorm, bucketed
relative positions, attention (teacher-forced, absorbed cross-attention, cached decoding),
ReLU feed-forward, encoder and decoder layers. `t5.py` assembles them.

Shape letters: B batch, T encoder tokens, C code levels, K codes per level (padded to the
largest level), D d_model, H heads, E head width, F d_ff, W beams.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

NEG = -1e9  # additive mask value (finite: an all-masked row stays NaN-free)


@dataclasses.dataclass(frozen=True)
class T5Config:
  level_sizes: tuple[int, ...]     # codes per level of the item code table
  d_model: int = 128
  d_ff: int = 1024
  heads: int = 6
  head_dim: int = 64
  enc_layers: int = 4
  dec_layers: int = 4
  dropout: float = 0.1
  rel_buckets: int = 32
  rel_max_distance: int = 128
  user_buckets: int = 0            # hashed user token prepended to the encoder input; 0: none
  logit_scale: bool = True         # logits = (h x d^-0.5) . e (tied T5); False: h . e (ETEGRec)
  init_std: float = 0.0            # 0: T5's init (fan-scaled matrices, unit embeddings and
                                   # relative bias); > 0: every weight N(0, init_std) (ETEGRec 0.02)
  head: str = "level"              # "level": a softmax per level; "vocab": one softmax over the
                                   # whole tied table, EOS-terminated targets (LETTER-TIGER);
                                   # "items": one softmax over the catalogue after BOS, each
                                   # item's vector its codes' rows summed (no ID spelt)
  extra_vocab: int = 0             # "vocab" head: rows only in the softmax (LETTER: T5's text)
  item_tokens: str = "codes"       # encoder input: "codes", one token per code of each history
                                   # item (TIGER); "sum", one per item, its codes' rows summed
  dtype: str = "float32"           # compute dtype (train.dtype): "bfloat16" computes in bf16 with
                                   # float32 parameters; softmaxes, norms and logits in float32

  @property
  def compute(self):
    return jnp.dtype(self.dtype)

  @property
  def logit_mult(self) -> float:
    return self.d_model ** -0.5 if self.logit_scale else 1.0

  def init(self, std: float):
    """The initialiser of a weight whose T5 init has standard deviation `std`."""
    return nn.initializers.normal(self.init_std or std)

  @property
  def levels(self) -> int:
    return len(self.level_sizes)

  @property
  def offsets(self) -> tuple[int, ...]:
    return tuple(int(x) for x in np.cumsum((0,) + tuple(self.level_sizes))[:-1])

  @property
  def bos(self) -> int:
    return int(sum(self.level_sizes))

  @property
  def k_max(self) -> int:
    return max(self.level_sizes)

  @property
  def full_vocab(self) -> bool:
    return self.head == "vocab"

  @property
  def items_head(self) -> bool:
    return self.head == "items"

  @property
  def eos(self) -> int | None:
    """EOS's row (the "vocab" head), else None."""
    return self.bos + 1 if self.full_vocab else None

  @property
  def vocab_size(self) -> int:
    """Rows of the tied table: codes, BOS, and with the "vocab" head EOS and the extra rows."""
    return self.bos + 1 + (1 + self.extra_vocab if self.full_vocab else 0)


def model_config(model_cfg, level_sizes, dtype: str = "float32") -> T5Config:
  """Frozen architecture from a `config.model` ConfigDict, the code table's level sizes and
  the compute dtype (`train.dtype`)."""
  d = {k: v for k, v in model_cfg.to_dict().items() if k != "kind"}
  return T5Config(level_sizes=tuple(int(s) for s in level_sizes), dtype=dtype, **d)


def relative_buckets(rel_pos, bidirectional: bool, num_buckets: int, max_distance: int):
  """T5's bucketing of (key position - query position): exact for small distances,
  logarithmic up to max_distance. Works on numpy and jax arrays."""
  xp = jnp if isinstance(rel_pos, jax.Array) else np
  ret = 0
  n = -rel_pos
  if bidirectional:
    num_buckets //= 2
    ret = (n < 0).astype(np.int32) * num_buckets
    n = xp.abs(n)
  else:
    n = xp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  val_large = max_exact + (
      xp.log(xp.maximum(n, 1).astype(np.float32) / max_exact)
      / np.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(np.int32)
  val_large = xp.minimum(val_large, num_buckets - 1)
  return ret + xp.where(is_small, n, val_large)


def dropout_mask(key, shape, rate: float):
  """Bernoulli keep-mask for dropout, cheap on CPU.

  Random bytes come from a counter hash (murmur3's 32-bit finaliser over iota, seeded by
  one draw from `key`), four 8-bit uniforms per 32-bit word. Drawing them with
  jax.random (threefry) made dropout half of the CPU train step; this is ~8x cheaper and
  statistically fine for dropout (not for anything else). The drop probability is
  quantised to round(rate * 256) / 256 (0.1 -> 0.1016); returns (mask, the exact keep
  probability) so the rescaling stays unbiased."""
  n = int(np.prod(shape))
  seed = jax.random.bits(key, (), jnp.uint32)
  h = jax.lax.iota(jnp.uint32, -(-n // 4)) * jnp.uint32(0x9E3779B1) + seed
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  h = h ^ (h >> 16)
  u8 = jax.lax.bitcast_convert_type(h, jnp.uint8).reshape(-1)[:n].reshape(shape)
  threshold = int(round(rate * 256))
  return u8 >= threshold, 1.0 - threshold / 256.0


class Dropout(nn.Module):
  """Inverted dropout drawing its keep-mask with `dropout_mask` ('dropout' rng stream)."""
  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate <= 0.0:
      return x
    keep, p = dropout_mask(self.make_rng("dropout"), x.shape, self.rate)
    return jnp.where(keep, x / p, 0.0).astype(x.dtype)


class RMSNorm(nn.Module):
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    var = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
    return (x * jax.lax.rsqrt(var + self.eps)).astype(x.dtype) * scale.astype(x.dtype)


def attend(q_BxQxHxE, k_BxKxHxE, v_BxKxHxE, bias_BxHxQxK, dropout_fn):
  """softmax(q k^T + bias) v, no scaling (T5)."""
  s = jnp.einsum("bqhe,bkhe->bhqk", q_BxQxHxE, k_BxKxHxE) + bias_BxHxQxK
  w = dropout_fn(jax.nn.softmax(s.astype(jnp.float32), axis=-1).astype(q_BxQxHxE.dtype))
  return jnp.einsum("bhqk,bkhe->bqhe", w, v_BxKxHxE)


@jax.custom_vjp
def matmul(x_NxI, w_IxO):
  """x @ w whose weight gradient transposes the narrower of x and dy. XLA:CPU lays a
  dot's contracted operand out contiguously along the contraction; for dw = x^T dy over
  the N = B x T rows, autodiff's operand order makes it copy x whatever its width: the
  feed-forward's [N, 1024] hidden states in the second projection. dw = (dy^T x)^T copies
  the [N, 128] dy instead. The same product, the same values up to rounding."""
  return jnp.dot(x_NxI, w_IxO)


def _matmul_fwd(x, w):
  return jnp.dot(x, w), (x, w)


def _matmul_bwd(res, dy):
  x, w = res
  x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
  rows = (((0,), (0,)), ((), ()))
  if x2.shape[1] > dy2.shape[1]:
    dw = jax.lax.dot_general(dy2, x2, rows).T
  else:
    dw = jax.lax.dot_general(x2, dy2, rows)
  return jnp.dot(dy, w.T), dw.astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


class Projection(nn.Module):
  """A bias-free linear map: nn.Dense's parameter ("kernel" [in, out]) computed with
  `matmul`; its kernel can also be read on its own (`kernel()`, the absorbed
  cross-attention)."""
  in_features: int
  features: int
  kernel_init: object
  dtype: object = jnp.float32

  def setup(self):
    self.w = self.param("kernel", self.kernel_init, (self.in_features, self.features))

  def kernel(self):
    return self.w.astype(self.dtype)

  def __call__(self, x):
    return matmul(x.astype(self.dtype), self.kernel())


class Attention(nn.Module):
  cfg: T5Config

  def setup(self):
    c = self.cfg
    inner = c.heads * c.head_dim
    init = lambda fan: c.init(fan ** -0.5)  # T5's init
    dense = lambda n_in, n, fan: Projection(n_in, n, init(fan), c.compute)
    self.q = dense(c.d_model, inner, c.d_model * c.head_dim)
    self.k = dense(c.d_model, inner, c.d_model)
    self.v = dense(c.d_model, inner, c.d_model)
    self.o = dense(inner, c.d_model, inner)
    self.drop = Dropout(c.dropout)

  def split(self, x):
    return x.reshape(x.shape[:-1] + (self.cfg.heads, self.cfg.head_dim))

  def kv(self, x_BxKxD):
    return self.split(self.k(x_BxKxD)), self.split(self.v(x_BxKxD))

  def kv_heads_first(self, x_BxKxD):
    """Keys/values laid out [B, H, K, E], the layout the decoding step's dots consume
    directly (computed once per user, so no per-step relayout inside the beam loop)."""
    k, v = self.kv(x_BxKxD)
    return jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)

  def attend_heads_first(self, x_QxD, k_HxKxE, v_HxKxE, bias_HxQxK):
    """Attention of Q queries (one user's beams) over one user's [H, K, E] keys/values."""
    q = jnp.swapaxes(self.split(self.q(x_QxD)), 0, 1)                     # [H, Q, E]
    s = jnp.einsum("hqe,hke->hqk", q, k_HxKxE) + bias_HxQxK
    w = jax.nn.softmax(s.astype(jnp.float32), axis=-1).astype(q.dtype)
    out = jnp.swapaxes(jnp.einsum("hqk,hke->hqe", w, v_HxKxE), 0, 1)       # [Q, H, E]
    return self.o(out.reshape(out.shape[0], -1))

  def attend_cached(self, x_WxD, cache, bias_HxP):
    """Self-attention of one new position of W beams over the cached positions and itself.
    `cache` is (keys, values), tuples of one [W or 1, H, E] array per earlier position;
    returns (output [W, D], the cache with this position appended). With a handful of
    positions the scores and the weighted sum are element-wise products and sums over E
    and over the positions (no tiny batched dots, no relayout of a [W, P, H, E] cache)."""
    q = self.split(self.q(x_WxD))                                           # [W, H, E]
    k, v = self.kv(x_WxD)
    ks, vs = cache[0] + (k,), cache[1] + (v,)
    s = jnp.stack([jnp.sum((q * kp).astype(jnp.float32), -1) for kp in ks], -1) + bias_HxP
    w = jax.nn.softmax(s, axis=-1).astype(q.dtype)                          # [W, H, P]
    out = sum(w[..., p, None] * vp for p, vp in enumerate(vs))              # [W, H, E]
    return self.o(out.reshape(out.shape[0], -1)), (ks, vs)

  def __call__(self, x_BxQxD, kv, bias, train: bool):
    """Attention of x's queries over precomputed keys/values `kv`."""
    q = self.split(self.q(x_BxQxD))
    out = attend(q, kv[0], kv[1], bias, lambda w: self.drop(w, deterministic=not train))
    return self.o(out.reshape(out.shape[:-2] + (-1,)))

  def attend_absorbed(self, x_BxQxD, enc_BxKxD, bias, train: bool):
    """`self(x, self.kv(enc), bias, train)` with the key and value projections moved to
    the query side: s = (q W_k^T) enc^T and out = (w enc) W_v per head, equal up to
    rounding. The teacher-forced decoder's cross-attention has Q = C + 1 queries over K
    encoder states; projecting every encoder state to keys and values costs 2 K D H E
    multiply-adds per layer, this 2 Q H E D + 2 Q H K D, about 7x fewer at Q = 5, K = 81
    (and no [B, K, H, E] -> [B, H, E, K] relayout of the keys). Decoding keeps the
    cached keys and values: there W beams x C steps share them."""
    c = self.cfg
    wk = self.k.kernel().reshape(c.d_model, c.heads, c.head_dim)
    wv = self.v.kernel().reshape(c.d_model, c.heads, c.head_dim)
    enc = enc_BxKxD.astype(c.compute)
    qk = jnp.einsum("bqhe,dhe->bhqd", self.split(self.q(x_BxQxD)), wk)
    s = jnp.einsum("bhqd,bkd->bhqk", qk, enc) + bias
    w = self.drop(jax.nn.softmax(s.astype(jnp.float32), axis=-1).astype(c.compute),
                  deterministic=not train)
    out = jnp.einsum("bhqd,dhe->bqhe", jnp.einsum("bhqk,bkd->bhqd", w, enc), wv)
    return self.o(out.reshape(out.shape[:-2] + (-1,)))


class FeedForward(nn.Module):
  cfg: T5Config

  @nn.compact
  def __call__(self, x, train: bool):
    c = self.cfg
    h = Projection(c.d_model, c.d_ff, c.init(c.d_model ** -0.5), c.compute, name="wi")(x)
    h = Dropout(c.dropout)(nn.relu(h), deterministic=not train)
    return Projection(c.d_ff, c.d_model, c.init(c.d_ff ** -0.5), c.compute, name="wo")(h)


class EncoderLayer(nn.Module):
  cfg: T5Config

  def setup(self):
    self.norm1, self.norm2 = RMSNorm(), RMSNorm()
    self.attn = Attention(self.cfg)
    self.ff = FeedForward(self.cfg)
    self.drop = Dropout(self.cfg.dropout)

  def __call__(self, x, bias, train: bool):
    h = self.norm1(x)
    x = x + self.drop(self.attn(h, self.attn.kv(h), bias, train), deterministic=not train)
    return x + self.drop(self.ff(self.norm2(x), train), deterministic=not train)


class DecoderLayer(nn.Module):
  cfg: T5Config

  def setup(self):
    self.norm1, self.norm2, self.norm3 = RMSNorm(), RMSNorm(), RMSNorm()
    self.self_attn = Attention(self.cfg)
    self.cross_attn = Attention(self.cfg)
    self.ff = FeedForward(self.cfg)
    self.drop = Dropout(self.cfg.dropout)

  def cross_kv(self, enc_BxTxD):
    return self.cross_attn.kv_heads_first(enc_BxTxD)

  def __call__(self, x, self_bias, enc_BxTxD, cross_bias, train: bool):
    """Teacher-forced: every decoder position at once over the encoder states [B, T, D]
    (absorbed cross-attention)."""
    d = lambda y: self.drop(y, deterministic=not train)
    h = self.norm1(x)
    x = x + d(self.self_attn(h, self.self_attn.kv(h), self_bias, train))
    x = x + d(self.cross_attn.attend_absorbed(self.norm2(x), enc_BxTxD, cross_bias, train))
    return x + d(self.ff(self.norm3(x), train))

  def step(self, x_WxD, cache, self_bias_HxP, cross, cross_bias):
    """One decoding position of W beams of one user: self-attention over the cache
    (`Attention.attend_cached`), the beams as the queries of one cross-attention over the
    user's cached [H, T, E] keys/values `cross`. Returns (x [W, D], updated cache)."""
    x_out, cache = self.self_attn.attend_cached(self.norm1(x_WxD), cache, self_bias_HxP)
    x = x_WxD + x_out
    x = x + self.cross_attn.attend_heads_first(self.norm2(x), *cross, cross_bias)
    return x + self.ff(self.norm3(x), False), cache
