"""Constrained beam search over the catalogue's semantic IDs, on device.

The valid IDs are compiled once per code table into prefix tables (CSR over a trie whose
nodes are the distinct prefixes in lexicographic order), so each step is a masked top-k:
no host callbacks, no per-beam loops. The search is written for one user, `jax.vmap`-ed
over a batch, with a Python loop over the (few) code levels; the encoder and the
cross-attention keys/values are computed once per user and a key/value cache carries the
decoder's self-attention across levels.

Shape letters: B users, N items, C levels, K codes per level (padded), W beams, T encoder
tokens, D width.
"""
from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.recommender.t5 import T5, empty_cache, eos_logp, level_logp


@flax.struct.dataclass
class PrefixTables:
  """Trie of the valid IDs. Depth-d nodes are the distinct length-d prefixes, numbered in
  lexicographic order, so a node's children are contiguous at the next depth.

  child_start_CxN1: children of depth-l node n are depth-(l+1) nodes
                    child_start[l, n] .. child_start[l, n + 1] - 1
  child_code_CxN:   level-l code of depth-(l+1) node m
  leaf_item_N:      item whose full ID is depth-C node m (with shared IDs: the first item
                    that has it)
  rep_item_N:       each item's representative, the item a search returns for its ID: the
                    item itself when IDs are unique (evaluation compares representatives,
                    so that a shared ID is a hit for every item that has it)
  """
  child_start_CxN1: jax.Array
  child_code_CxN: jax.Array
  leaf_item_N: jax.Array
  rep_item_N: jax.Array


@jax.jit
def build_prefix_tables(codes_NxC) -> PrefixTables:
  """Compiles a (unique) code table into prefix tables, on device."""
  codes_NxC = codes_NxC.astype(jnp.int32)
  n, c = codes_NxC.shape
  order = jnp.lexsort(tuple(codes_NxC[:, l] for l in reversed(range(c))))
  s = codes_NxC[order]
  node_prev = jnp.zeros(n, jnp.int32)  # depth 0: the root
  starts, child_codes = [], []
  differs = jnp.zeros(n, bool)
  for l in range(c):
    differs = differs | jnp.concatenate([jnp.ones(1, bool), s[1:, l] != s[:-1, l]])
    node = (jnp.cumsum(differs) - 1).astype(jnp.int32)  # depth-(l+1) node of each sorted row
    count = node[-1] + 1
    first_child = jax.ops.segment_min(node, node_prev, num_segments=n + 1)
    first_child = jnp.where(jnp.arange(n + 1) <= node_prev[-1], first_child, count)
    starts.append(first_child.astype(jnp.int32))
    child_codes.append(jnp.zeros(n, jnp.int32).at[node].set(s[:, l]))
    node_prev = node
  leaf = jnp.zeros(n, jnp.int32).at[node_prev].set(order.astype(jnp.int32))
  return PrefixTables(jnp.stack(starts), jnp.stack(child_codes), leaf, jnp.arange(n, dtype=jnp.int32))


def prefix_tables(codes_NxC, shared: bool = False) -> PrefixTables:
  """Host entry point: checks that IDs are unique (or, `shared`, builds the trie over the
  distinct IDs, each standing for the first item that has it), then builds the tables."""
  codes = np.asarray(codes_NxC)
  uniq, first, inverse = np.unique(codes, axis=0, return_index=True, return_inverse=True)
  if len(uniq) == len(codes):
    return build_prefix_tables(jnp.asarray(codes))
  if not shared:
    raise ValueError("constrained decoding needs unique item IDs: resolve collisions first "
                     "(or tokenizer.shared_ids=True)")
  t = build_prefix_tables(jnp.asarray(codes[first]))
  first = jnp.asarray(first, jnp.int32)
  return PrefixTables(t.child_start_CxN1, t.child_code_CxN, first[t.leaf_item_N],
                      first[jnp.asarray(inverse.reshape(-1), jnp.int32)])


def beam_search(step_fn, state, tables: PrefixTables, level_sizes, offsets, bos: int,
                beam: int, constrained: bool = True, final_fn=None):
  """Beam search for one user, constrained to the catalogue's IDs (or not).

  step_fn(state, tokens_W, level) -> (logp [W, K], state): the model's next-code
  log-probabilities (-inf on a level's padding codes) for W beams fed `tokens_W` (embedding
  rows: BOS, then offset + code) at `level` (a Python int: 1 beam at level 0, W after);
  every leaf of `state` has a leading beam axis and is reordered as beams are selected
  (the returned state's structure may change from level to level). Scores are sums of
  those log-probabilities over the levels, candidates masked to valid children.
  `final_fn(state, tokens_W) -> [W]`, if given, adds a last term to every finished ID's
  score (EOS's log-probability: HF's constrained `generate` forces EOS after a full ID)
  and the IDs are re-ranked by it.
  Returns (items [W], scores [W]) best first; -1 / -inf where fewer than W IDs exist.

  `constrained=False` (ETEGRec's official test decoding): every code of a level may follow
  any prefix; the trie is only walked to name the item of each finished ID, and an ID that
  no item has comes back as item -1 (a miss) with its finite score."""
  c, w = len(level_sizes), beam
  k = max(level_sizes)
  n = tables.leaf_item_N.shape[0]
  offsets = jnp.asarray(offsets, jnp.int32)
  sizes = jnp.asarray(level_sizes, jnp.int32)
  j = jnp.arange(k)

  def step(carry, level):
    tokens, scores, node, state = carry   # node -1: a prefix no item has (unconstrained)
    live = tokens.shape[0]  # 1 at the root, W afterwards
    logp, state = step_fn(state, tokens, level)
    in_level = j < sizes[level]
    # valid children of each beam's prefix: a masked scatter of at most K codes
    start = tables.child_start_CxN1[level, jnp.maximum(node, 0)]
    degree = jnp.where(node >= 0, tables.child_start_CxN1[level, jnp.maximum(node, 0) + 1] - start, 0)
    idx = start[:, None] + j[None, :]
    ok = j[None, :] < degree[:, None]
    code = jnp.where(ok, tables.child_code_CxN[level, jnp.clip(idx, 0, n - 1)], k)
    child = jnp.full((live, k), -1, jnp.int32).at[jnp.arange(live)[:, None], code].set(
        idx, mode="drop")
    allowed = child >= 0 if constrained else jnp.broadcast_to(in_level, (live, k))
    cand = jnp.where(allowed, scores[:, None] + logp, -jnp.inf).reshape(-1)
    if cand.shape[0] < w:  # fewer candidates than beams (tiny codebooks): pad with -inf
      cand = jnp.pad(cand, (0, w - cand.shape[0]), constant_values=-jnp.inf)
    top_s, top_i = jax.lax.top_k(cand, w)
    top_i = jnp.minimum(top_i, live * k - 1)
    parent, chosen = top_i // k, top_i % k
    new_node = child[parent, chosen]
    # reorder each state leaf by parent beam as whole contiguous rows (much faster than
    # an element-wise gather on the cache's [W, H, E] arrays)
    state = jax.tree.map(lambda a: a.reshape(live, -1)[parent].reshape((w,) + a.shape[1:]), state)
    return offsets[level] + chosen, top_s, new_node, state

  # The root has one live beam: expanding it alone (instead of W copies, W-1 of them at
  # -inf) saves a quarter of the decoder's work at depth 4. The levels are a Python loop
  # (C is static and small): each level's shapes are its own, so a state may grow (the
  # decoder's cache gains a position per level, appended rather than written in place).
  carry = (jnp.full((1,), bos, jnp.int32), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32),
           jax.tree.map(lambda a: a[:1], state))
  for level in range(c):
    carry = step(carry, level)
  tokens, scores, node, state = carry
  if final_fn is not None:
    scores, order = jax.lax.top_k(scores + final_fn(state, tokens), w)
    node = node[order]
  items = jnp.where(jnp.isfinite(scores) & (node >= 0), tables.leaf_item_N[jnp.maximum(node, 0)], -1)
  return items, scores


def t5_step_fns(model: T5, params, head, cross_kv, enc_mask_T):
  """The T5's `(step_fn, eos_fn)` for `beam_search` (or any search that starts from
  `empty_cache` and calls levels 0, 1, ... in order), for one user. The state is the
  decoder's key/value cache of the positions after BOS: BOS is the same for every beam, so
  its position is decoded once, here, and its keys/values stay one [1, H, E] row per layer
  that every beam's attention broadcasts (never copied into, or reordered with, the
  beams' caches). `eos_fn` is the "vocab" head's EOS term after the last code."""
  cfg = model.cfg

  def run(tokens, cache):
    return model.apply(params, tokens, cache, cross_kv, enc_mask_T, method=T5.decode_step)

  root_hidden, bos = run(jnp.full((1,), cfg.bos, jnp.int32), empty_cache(cfg))
  root_logp = level_logp(cfg, root_hidden, head, 0)

  def with_bos(cache):
    return [(bk + ck, bv + cv) for (bk, bv), (ck, cv) in zip(bos, cache)]

  def step_fn(cache, tokens, level):
    if level == 0:
      return root_logp, cache
    hidden, cache = run(tokens, with_bos(cache))
    return level_logp(cfg, hidden, head, level), [(k[1:], v[1:]) for k, v in cache]

  def eos_fn(cache, tokens):
    return eos_logp(cfg, run(tokens, with_bos(cache))[0], head)

  return step_fn, eos_fn


def _t5_beam_search_one(model: T5, params, head, cross_kv, enc_mask_T, tables: PrefixTables,
                        beam: int, constrained: bool):
  """T5 decoding for one user (`t5_step_fns`)."""
  cfg = model.cfg
  step_fn, eos_fn = t5_step_fns(model, params, head, cross_kv, enc_mask_T)
  return beam_search(step_fn, empty_cache(cfg), tables, cfg.level_sizes, cfg.offsets, cfg.bos, beam,
                     constrained, eos_fn if cfg.full_vocab else None)


@functools.partial(jax.jit, static_argnames=("model", "beam", "constrained"))
def generate(params, tokens_BxT, mask_BxT, user_B, tables: PrefixTables, *, model: T5, beam: int,
             constrained: bool = True):
  """Encodes a batch once and beam-searches every user: (items [B, W], scores [B, W]);
  `constrained=False`: over the whole code space, item -1 for IDs no item has."""
  enc, enc_mask = model.apply(params, tokens_BxT, mask_BxT, user_B, False, method=T5.encode)
  cross = model.apply(params, enc, method=T5.cross_kv)  # once per user, for all beams
  head = model.apply(params, method=T5.output_head)
  one = functools.partial(_t5_beam_search_one, model, params, head, tables=tables, beam=beam,
                          constrained=constrained)
  return jax.vmap(one)(cross, enc_mask)
