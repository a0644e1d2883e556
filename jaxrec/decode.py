"""Beam search over semantic IDs, constrained to the catalogue's or over the whole code
space, on device; it knows no model.

The valid IDs are compiled once per code table into prefix tables (CSR over a trie whose
nodes are the distinct prefixes in lexicographic order), so each step is a masked top-k:
no host callbacks, no per-beam loops. The search is written for one example over a step
function (a model's cached decoding step: `recommender.steps.t5_step_fns`), `jax.vmap`-ed
by the caller over a batch, with a Python loop over the (few) code levels.

Shape letters: B users, N items, C levels, K codes per level (padded), W beams, T encoder
tokens, D width.
"""
from __future__ import annotations

from typing import Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np


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


def search(step_fn, state, tables: Optional[PrefixTables], level_sizes, offsets, bos: int,
           beam: int, constrained: bool = True, final_fn=None):
  """Beam search for one example: (codes [W, C], scores [W], trie nodes [W]) best first.

  step_fn(state, tokens_W, level) -> (logp [W, K], state): the model's next-code
  log-probabilities (-inf on a level's padding codes) for W beams fed `tokens_W` (embedding
  rows: BOS, then offset + code) at `level` (a Python int: 1 beam at level 0, W after);
  every leaf of `state` has a leading beam axis and is reordered as beams are selected
  (the returned state's structure may change from level to level). Scores are sums of
  those log-probabilities over the levels.
  `tables` and `constrained`: candidates masked to the valid children of each prefix; with
  `constrained=False` every code of a level may follow any prefix and the trie is only
  walked to name each finished ID's node (-1: an ID no item has); with `tables=None`, the
  whole code space and no trie (nodes -1: SIIT's search for new IDs).
  `final_fn(state, tokens_W) -> [W]`, if given, adds a last term to every finished ID's
  score (EOS's log-probability: HF's constrained `generate` forces EOS after a full ID)
  and the IDs are re-ranked by it. Fewer than W IDs: the rest have score -inf."""
  c, w = len(level_sizes), beam
  k = max(level_sizes)
  offsets = jnp.asarray(offsets, jnp.int32)
  sizes = jnp.asarray(level_sizes, jnp.int32)
  j = jnp.arange(k)
  constrained = constrained and tables is not None

  def children(node, level):
    """Each beam's child node per code [live, K] (-1: no item's ID continues that way)."""
    live = node.shape[0]
    if tables is None:
      return jnp.full((live, k), -1, jnp.int32)
    n = tables.leaf_item_N.shape[0]
    start = tables.child_start_CxN1[level, jnp.maximum(node, 0)]
    degree = jnp.where(node >= 0, tables.child_start_CxN1[level, jnp.maximum(node, 0) + 1] - start, 0)
    idx = start[:, None] + j[None, :]
    ok = j[None, :] < degree[:, None]
    code = jnp.where(ok, tables.child_code_CxN[level, jnp.clip(idx, 0, n - 1)], k)
    return jnp.full((live, k), -1, jnp.int32).at[jnp.arange(live)[:, None], code].set(
        idx, mode="drop")

  def step(carry, level):
    tokens, scores, node, codes, state = carry
    live = tokens.shape[0]  # 1 at the root, W afterwards
    logp, state = step_fn(state, tokens, level)
    child = children(node, level)
    allowed = child >= 0 if constrained else jnp.broadcast_to(j < sizes[level], (live, k))
    cand = jnp.where(allowed, scores[:, None] + logp, -jnp.inf).reshape(-1)
    if cand.shape[0] < w:  # fewer candidates than beams (tiny codebooks): pad with -inf
      cand = jnp.pad(cand, (0, w - cand.shape[0]), constant_values=-jnp.inf)
    top_s, top_i = jax.lax.top_k(cand, w)
    top_i = jnp.minimum(top_i, live * k - 1)
    parent, chosen = top_i // k, top_i % k
    # reorder each state leaf by parent beam as whole contiguous rows (much faster than
    # an element-wise gather on the cache's [W, H, E] arrays)
    state = jax.tree.map(lambda a: a.reshape(live, -1)[parent].reshape((w,) + a.shape[1:]), state)
    codes = jnp.concatenate([codes[parent], chosen[:, None].astype(jnp.int32)], axis=1)
    return offsets[level] + chosen, top_s, child[parent, chosen], codes, state

  # The root has one live beam: expanding it alone (instead of W copies, W-1 of them at
  # -inf) saves a quarter of the decoder's work at depth 4. The levels are a Python loop
  # (C is static and small): each level's shapes are its own, so a state may grow (the
  # decoder's cache gains a position per level, appended rather than written in place).
  carry = (jnp.full((1,), bos, jnp.int32), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32),
           jnp.zeros((1, 0), jnp.int32), jax.tree.map(lambda a: a[:1], state))
  for level in range(c):
    carry = step(carry, level)
  tokens, scores, node, codes, state = carry
  if final_fn is not None:
    scores, order = jax.lax.top_k(scores + final_fn(state, tokens), w)
    node, codes = node[order], codes[order]
  return codes, scores, node


def beam_search(step_fn, state, tables: PrefixTables, level_sizes, offsets, bos: int,
                beam: int, constrained: bool = True, final_fn=None):
  """`search` over the catalogue's IDs for one example: (items [W], scores [W]) best first;
  -1 / -inf where fewer than W IDs exist. `constrained=False` (ETEGRec's official test
  decoding): an ID that no item has comes back as item -1 (a miss) with its finite score."""
  _, scores, node = search(step_fn, state, tables, level_sizes, offsets, bos, beam,
                           constrained, final_fn)
  items = jnp.where(jnp.isfinite(scores) & (node >= 0), tables.leaf_item_N[jnp.maximum(node, 0)], -1)
  return items, scores
