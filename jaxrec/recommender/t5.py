"""T5-style encoder-decoder over semantic-ID codes (Flax Linen, used through `apply`).

Pre-norm RMSNorm, bucketed relative position bias (computed by the first layer's table
and shared by every layer, as in T5), ReLU feed-forward with dropout, no attention
scaling (T5 folds it into the query initialisation); the teacher-forced cross-attention
multiplies its few decoder queries into the key and value projections
(`Attention.attend_absorbed`); decoding attends over cached keys and values (one array
per decoded position, `Attention.attend_cached`; the encoder's once per user,
`Attention.attend_heads_first`). One embedding table holds every level's codes at
per-level offsets plus a BOS row. Three output heads (`head`):
- "level" (default): the logits of decoder position l are the dot products with level l's
  rows only (tied input/output tables, a softmax per level);
- "vocab" (LETTER-TIGER's HF T5): one softmax over every row of the tied table (all levels'
  codes, BOS, an EOS row and `extra_vocab` rows that are never inputs or targets: the
  T5 tokenizer's text tokens); targets end with EOS, the encoder input ends with EOS as
  the T5 tokenizer writes it, and decoding adds EOS's log-probability to every finished ID;
- "items" (an analysis head: the output side without spelling the ID): the decoder reads
  BOS alone and its state is scored against every item of the catalogue, an item's vector
  the sum of its codes' rows of the tied table (SASRec's `item_input='codes'` table); one
  softmax over the items, a full ranking instead of a beam search.

Shape letters: B batch, T encoder tokens, C code levels, K codes per level (padded to the
largest level), D d_model, H heads, E head width, F d_ff, W beams.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.recommender.t5_layers import (NEG, DecoderLayer, Dropout, EncoderLayer, RMSNorm,
                                        T5Config, relative_buckets)


def empty_cache(cfg: T5Config):
  """The decoder's key/value cache before any position: per layer a pair (keys, values) of
  tuples with one [W, H, E] array per decoded position (W beams; 1 for a position every
  beam shares, broadcast), grown by `T5.decode_step`."""
  return [((), ()) for _ in range(cfg.dec_layers)]


def step_logits(cfg: T5Config, hidden_WxD, table_KxD):
  """One decoding step's logits [W, K] (float32) against an output table."""
  return ((hidden_WxD * cfg.logit_mult) @ table_KxD.T).astype(jnp.float32)


def level_logp(cfg: T5Config, hidden_WxD, head, level):
  """Log-probabilities [W, K] of level `level`'s codes at a decoding step (-inf on padding
  codes). `head` is `T5.output_head()`: per-level tables [C, K, D], each level's softmax
  over its own codes; or, with the "vocab" head, the whole table [V, D], the softmax over
  every row and the level's codes read out of it."""
  j = jnp.arange(cfg.k_max)
  size = jnp.asarray(cfg.level_sizes, jnp.int32)[level]
  if cfg.full_vocab:
    logp = jax.nn.log_softmax(step_logits(cfg, hidden_WxD, head), axis=-1)
    rows = jnp.asarray(cfg.offsets, jnp.int32)[level] + jnp.minimum(j, size - 1)
    return jnp.where(j < size, logp[:, rows], -jnp.inf)
  logits = step_logits(cfg, hidden_WxD, head[level])
  return jax.nn.log_softmax(jnp.where(j < size, logits, -jnp.inf), axis=-1)


def eos_logp(cfg: T5Config, hidden_WxD, head):
  """EOS's log-probability [W] after a full ID ("vocab" head)."""
  return jax.nn.log_softmax(step_logits(cfg, hidden_WxD, head), axis=-1)[:, cfg.eos]


class T5(nn.Module):
  cfg: T5Config

  def setup(self):
    c = self.cfg
    self.embed = self.param("embed", c.init(1.0), (c.vocab_size, c.d_model))
    if c.user_buckets:
      self.user_embed = self.param("user_embed", c.init(1.0), (c.user_buckets, c.d_model))
    self.enc_rel = self.param("enc_rel", c.init(1.0), (c.rel_buckets, c.heads))
    self.dec_rel = self.param("dec_rel", c.init(1.0), (c.rel_buckets, c.heads))
    self.encoder = [EncoderLayer(c) for _ in range(c.enc_layers)]
    self.decoder = [DecoderLayer(c) for _ in range(c.dec_layers)]
    self.enc_norm, self.dec_norm = RMSNorm(), RMSNorm()
    self.drop = Dropout(c.dropout)

  # ----------------------------------------------------------------- helpers
  def _rel_bias(self, table, q_pos, k_pos, bidirectional):
    """[H, Q, K] bias from static or traced positions."""
    c = self.cfg
    buckets = relative_buckets(k_pos[None, :] - q_pos[:, None], bidirectional, c.rel_buckets,
                               c.rel_max_distance)
    return jnp.transpose(table[buckets], (2, 0, 1))

  def level_tables(self):
    """Output tables [C, K, D], level l's rows of the tied embedding (zero-padded to K)."""
    c = self.cfg
    rows = []
    for off, k in zip(c.offsets, c.level_sizes):
      t = self.embed[off:off + k].astype(c.compute)
      rows.append(jnp.pad(t, ((0, c.k_max - k), (0, 0))))
    return jnp.stack(rows)

  def output_head(self):
    """What `level_logp` scores against: `level_tables()`, or the whole table ("vocab")."""
    return self.embed.astype(self.cfg.compute) if self.cfg.full_vocab else self.level_tables()

  def logits(self, hidden_BxCxD):
    """Training logits [B, C, K]: position l against level l's codes; padding codes get NEG.
    With the "vocab" head: [B, C + 1, V], every position against every row."""
    c = self.cfg
    if c.full_vocab:
      return (jnp.einsum("bcd,vd->bcv", hidden_BxCxD, self.output_head())
              * c.logit_mult).astype(jnp.float32)
    logits = (jnp.einsum("bcd,ckd->bck", hidden_BxCxD, self.level_tables())
              * c.logit_mult).astype(jnp.float32)
    valid = np.arange(c.k_max)[None, :] < np.asarray(c.level_sizes)[:, None]
    return jnp.where(valid[None], logits, NEG)

  def item_logits(self, hidden_BxD, codes_NxC):
    """The "items" head's logits [B, N]: each item's vector is the sum of its codes' rows."""
    c = self.cfg
    table_NxD = jnp.sum(self.embed[codes_NxC + jnp.asarray(c.offsets, jnp.int32)], axis=1)
    return ((hidden_BxD * c.logit_mult) @ table_NxD.astype(c.compute).T).astype(jnp.float32)

  # ----------------------------------------------------------------- encoder
  def encode(self, tokens_BxT, mask_BxT, user_B=None, train: bool = False):
    """Encoder states [B, T(+1), D] and their mask (the user token, if any, comes first);
    tokens [B, T, C] (`item_tokens='sum'`): each position the sum of its C rows."""
    x = self.embed[tokens_BxT]
    if tokens_BxT.ndim == 3:
      x = jnp.sum(x, axis=2)
    return self.encode_inputs(x, mask_BxT, user_B, train)

  def _cast(self, x):
    return x.astype(self.cfg.compute)

  def encode_inputs(self, x_BxTxD, mask_BxT, user_B=None, train: bool = False):
    """`encode` from input vectors (code embeddings, or SIIT's soft item tokens); no user
    token when `user_B` is None."""
    c = self.cfg
    x = self._cast(x_BxTxD)
    if c.user_buckets and user_B is not None:
      u = self._cast(self.user_embed[jnp.mod(user_B, c.user_buckets)][:, None, :])
      x = jnp.concatenate([u, x], axis=1)
      mask_BxT = jnp.concatenate([jnp.ones_like(mask_BxT[:, :1]), mask_BxT], axis=1)
    t = x.shape[1]
    pos = np.arange(t)
    bias = self._rel_bias(self.enc_rel, pos, pos, True)[None]
    bias = bias + jnp.where(mask_BxT[:, None, None, :], 0.0, NEG)
    x = self.drop(x, deterministic=not train)
    for layer in self.encoder:
      x = layer(x, bias, train)
    return self.drop(self.enc_norm(x), deterministic=not train), mask_BxT

  # ----------------------------------------------------------------- decoder
  def cross_kv(self, enc_BxTxD):
    """Cross-attention keys/values [B, H, T, E] of every decoder layer, for decoding:
    computed once per user."""
    return [layer.cross_kv(enc_BxTxD) for layer in self.decoder]

  def decode(self, enc_BxTxD, enc_mask_BxT, dec_tokens_BxC, train: bool = False):
    """Teacher-forced decoder states [B, C, D] for inputs [BOS, c_0, ..., c_{C-2}] (with
    the "vocab" head [B, C + 1, D] for [BOS, c_0, ..., c_{C-1}])."""
    n = dec_tokens_BxC.shape[1]
    pos = np.arange(n)
    causal = jnp.where(pos[None, :] <= pos[:, None], 0.0, NEG)
    self_bias = (self._rel_bias(self.dec_rel, pos, pos, False) + causal)[None]
    cross_bias = jnp.where(enc_mask_BxT[:, None, None, :], 0.0, NEG)
    x = self.drop(self._cast(self.embed[dec_tokens_BxC]), deterministic=not train)
    for layer in self.decoder:
      x = layer(x, self_bias, enc_BxTxD, cross_bias, train)
    return self.drop(self.dec_norm(x), deterministic=not train)

  def decode_step(self, tokens_W, cache, cross_kv, enc_mask_T):
    """One decoder position for W beams of one user, with a key/value cache.

    tokens_W: embedding rows fed at the next position, P = the positions cached so far;
    cache: per layer (keys, values), tuples of P arrays [W or 1, H, E] (`empty_cache`);
    cross_kv: per layer (k, v) each [H, T, E] (`cross_kv`), shared by the beams.
    Returns (hidden [W, D], the cache with position P appended)."""
    pos = len(cache[0][0])
    self_bias = self._rel_bias(self.dec_rel, np.array([pos]), np.arange(pos + 1), False)[:, 0]
    cross_bias = jnp.where(enc_mask_T, 0.0, NEG)[None, None, :]             # [1, 1, T]
    x = self._cast(self.embed[tokens_W])                                     # [W, D]
    new_cache = []
    for layer, layer_cache, cross in zip(self.decoder, cache, cross_kv):
      x, layer_cache = layer.step(x, layer_cache, self_bias, cross, cross_bias)
      new_cache.append(layer_cache)
    return self.dec_norm(x), new_cache

  def __call__(self, tokens_BxT, mask_BxT, user_B, dec_tokens_BxC, train: bool = False):
    """Decoder states for teacher forcing (used by init and the training loss)."""
    enc, enc_mask = self.encode(tokens_BxT, mask_BxT, user_B, train)
    return self.decode(enc, enc_mask, dec_tokens_BxC, train)
