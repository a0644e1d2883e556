"""Item code tables: health statistics, collision resolution, saving and loading.

Shape letters: N items, C levels, K codebook size, D code width.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.checkpoint import write_atomic
from jaxrec.errors import ConfigError, DataError
from jaxrec.tokenizer.rq import sinkhorn_log, squared_distances


def _groups(codes_NxC):
  """Sorts rows lexicographically (stable, so ties keep item order); returns
  (order [N], group id of each sorted row [N], size of each group id [N])."""
  n = codes_NxC.shape[0]
  order = jnp.lexsort(tuple(codes_NxC[:, c] for c in reversed(range(codes_NxC.shape[1]))))
  s = codes_NxC[order]
  new = jnp.concatenate([jnp.ones((1,), bool), jnp.any(s[1:] != s[:-1], axis=1)])
  gid = jnp.cumsum(new) - 1
  sizes = jax.ops.segment_sum(jnp.ones(n, jnp.int32), gid, num_segments=n)
  return order, gid, sizes


@functools.partial(jax.jit, static_argnames=("sizes",))
def code_health(codes_NxC, sizes: Sequence[int]):
  """Per-level codes used and usage perplexity, collision rate and largest group, on device."""
  used, ppl = [], []
  for level, k in enumerate(sizes):
    counts = jnp.zeros(k, jnp.float32).at[codes_NxC[:, level]].add(1.0)
    p = counts / jnp.sum(counts)
    used.append(jnp.sum(counts > 0))
    ppl.append(jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))))
  _, gid, group_sizes = _groups(codes_NxC)
  size_of_row = group_sizes[gid]
  return {
      "used": jnp.stack(used),
      "perplexity": jnp.stack(ppl),
      "collision_rate": jnp.mean((size_of_row > 1).astype(jnp.float32)),
      "colliding_items": jnp.sum(size_of_row > 1),
      "largest_group": jnp.max(group_sizes),
      "distinct_ids": jnp.sum(group_sizes > 0),
  }


def health_dict(codes_NxC, sizes: Sequence[int]) -> dict:
  """`code_health` as plain Python numbers for logs and JSON."""
  h = jax.device_get(code_health(jnp.asarray(codes_NxC), tuple(int(s) for s in sizes)))
  return {
      "used": [int(u) for u in h["used"]],
      "used_frac": [round(int(u) / k, 4) for u, k in zip(h["used"], sizes)],
      "perplexity": [round(float(p), 2) for p in h["perplexity"]],
      "collision_rate": round(float(h["collision_rate"]), 5),
      "colliding_items": int(h["colliding_items"]),
      "largest_group": int(h["largest_group"]),
      "distinct_ids": int(h["distinct_ids"]),
  }


@jax.jit
def suffix_level(codes_NxC):
  """Each item's index within its group of identical IDs (0 for unique IDs), ordered by
  item id: TIGER's and ETEGRec's extra level that makes every ID unique."""
  order, gid, _ = _groups(codes_NxC)
  n = codes_NxC.shape[0]
  pos = jnp.arange(n)
  first = jax.ops.segment_min(pos, gid, num_segments=n)
  rank_sorted = pos - first[gid]
  return jnp.zeros(n, jnp.int32).at[order].set(rank_sorted.astype(jnp.int32))


def append_suffix(codes_NxC, suffix_size: int) -> np.ndarray:
  """Appends the dedup level; a group larger than `suffix_size` is an error."""
  suffix = np.asarray(suffix_level(jnp.asarray(codes_NxC)))
  largest = int(suffix.max()) + 1 if len(suffix) else 0
  if largest > suffix_size:
    raise ConfigError(f"{largest} items share one semantic ID, more than the collision level's "
                      f"size {suffix_size}: raise tokenizer.suffix_size (to at least {largest}) "
                      "or train a better tokenizer")
  return np.concatenate([np.asarray(codes_NxC), suffix[:, None]], axis=1).astype(np.int32)


@functools.partial(jax.jit, static_argnames=("iters",))
def _sinkhorn_codes(residual_GxD, codebook_KxD, mask_G, eps, iters: int):
  dist = squared_distances(residual_GxD, codebook_KxD)
  return jnp.argmax(sinkhorn_log(dist, eps, iters, mask_G), axis=-1).astype(jnp.int32)


def resolve_sinkhorn(codes_NxC, last_residual_NxD, last_codebook_KxD, rounds: int = 20,
                     eps: float = 0.003, iters: int = 50):
  """LETTER's final step: re-assign the last level of every colliding group with a
  balanced (Sinkhorn) assignment over the group's items, for up to `rounds` rounds.

  Groups are padded to a power of two so only a few shapes compile. Returns the new codes
  and the number of rounds run."""
  codes = np.array(codes_NxC, np.int32)
  residual = jnp.asarray(last_residual_NxD)
  for r in range(rounds):
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    colliding = np.flatnonzero(counts[inverse] > 1)
    if len(colliding) == 0:
      return codes, r
    for g in np.unique(inverse[colliding]):
      members = np.flatnonzero(inverse == g)
      size = 1 << int(np.ceil(np.log2(max(len(members), 2))))
      pad = np.concatenate([members, np.full(size - len(members), members[0])])
      mask = np.arange(size) < len(members)
      new = _sinkhorn_codes(residual[pad], last_codebook_KxD, jnp.asarray(mask), eps, iters)
      codes[members, -1] = np.asarray(new)[:len(members)]
  return codes, rounds


@dataclasses.dataclass(frozen=True)
class CodeTable:
  """Immutable item -> semantic ID table [N, C'] with per-level sizes and statistics."""
  codes_NxC: np.ndarray
  sizes: tuple[int, ...]
  stats: dict
  fingerprint: str

  def __post_init__(self):
    self.codes_NxC.setflags(write=False)

  @property
  def n_items(self):
    return self.codes_NxC.shape[0]

  @property
  def depth(self):
    return self.codes_NxC.shape[1]

  def save(self, directory: str, name: str = "codes") -> str:
    """Writes `<name>.json` (statistics), then `<name>.npz` (codes, sizes, fingerprint), each
    whole or not at all: the .npz, last, is what a rerun reuses."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}.npz")
    write_atomic(os.path.join(directory, f"{name}.json"), json.dumps(
        {"fingerprint": self.fingerprint, "sizes": list(self.sizes),
         "shape": list(self.codes_NxC.shape), "stats": self.stats}, indent=2))
    tmp = path + ".tmp.npz"
    np.savez(tmp, codes=self.codes_NxC, sizes=np.asarray(self.sizes, np.int64),
             fingerprint=np.asarray(self.fingerprint))
    os.replace(tmp, path)
    return path

  @classmethod
  def load(cls, directory: str, name: str = "codes") -> "CodeTable":
    """The table `save` wrote; a damaged file (the .npz's zip checksums, the .json's syntax)
    is a DataError naming it."""
    path = os.path.join(directory, f"{name}.npz")
    try:
      with np.load(path, allow_pickle=False) as z:
        codes, sizes = z["codes"].astype(np.int32), tuple(int(s) for s in z["sizes"])
        fp = str(z["fingerprint"])
    except FileNotFoundError:
      raise
    except Exception as e:                   # noqa: BLE001 - zip, CRC, format: all damage
      raise DataError(path, None, f"damaged ({type(e).__name__}: {e})") from e
    stats = {}
    meta = os.path.join(directory, f"{name}.json")
    if os.path.exists(meta):
      try:
        with open(meta) as f:
          saved = json.load(f)
      except ValueError as e:
        raise DataError(meta, None, f"damaged ({e})") from e
      if saved.get("fingerprint") == fp:        # (not the statistics of another table)
        stats = saved.get("stats", {})
    return cls(codes, sizes, stats, fp)

  @classmethod
  def from_flag(cls, path: str, flag: str, n_items: int) -> "CodeTable":
    """The table a config flag names (`flag`=path, for the error messages): a run's workdir
    (its codes.npz) or a table file there (e.g. ETEGRec's final IDs, `W/codes_final.npz`),
    refused unless it codes `n_items` items."""
    src = os.path.expanduser(path)
    if src.endswith(".npz"):
      directory, name = os.path.dirname(src) or ".", os.path.basename(src)[:-len(".npz")]
    else:
      directory, name = src, "codes"
    file = os.path.join(directory, f"{name}.npz")
    if not os.path.isfile(file):
      raise ConfigError(f"{flag}={path!r}: no {os.path.basename(file)} there (give the "
                        "workdir of a tokenizer or training run, or a code table's .npz)")
    table = cls.load(directory, name)
    if table.n_items != n_items:
      raise ConfigError(f"{file} codes {table.n_items} items, the data set has {n_items}")
    return table

  def write_index_json(self, path: str, item_keys: Optional[Sequence[str]] = None):
    """Writes LETTER's `{"item": ["<a_12>", "<b_3>", ...]}` format."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    keys = item_keys if item_keys is not None else [str(i) for i in range(self.n_items)]
    out = {keys[i]: [f"<{letters[l]}_{int(c)}>" for l, c in enumerate(row)]
           for i, row in enumerate(self.codes_NxC)}
    write_atomic(path, json.dumps(out))


def finalize_codes(codes_NxC, sizes, collision: str, suffix_size: int, stats: dict,
                   fp: str, resolve_fn=None, shared_ids: bool = False) -> CodeTable:
  """Resolves collisions by `collision` and builds the CodeTable.

  collision: "suffix"   always append the dedup level (TIGER, ETEGRec);
             "sinkhorn" re-assign colliding groups' last level with `resolve_fn`
                        (LETTER), then append the dedup level only if collisions remain;
             "none"     keep as is; collisions are an error (the decoder needs unique IDs).
  shared_ids: collisions left after "sinkhorn" or "none" stay (no dedup level): items keep a
             shared ID, and evaluation counts the target's ID as a hit (LETTER's official
             code and test script)."""
  codes = np.asarray(codes_NxC, np.int32)
  sizes = tuple(int(s) for s in sizes)
  before = health_dict(codes, sizes)
  stats = dict(stats, before_resolution=before)
  if collision == "sinkhorn" and before["colliding_items"]:
    if resolve_fn is None:
      raise ValueError("collision='sinkhorn' needs the tokenizer's residuals (resolve_fn)")
    codes, rounds = resolve_fn(codes)
    stats["sinkhorn_rounds"] = rounds
    stats["after_sinkhorn"] = health_dict(codes, sizes)
  remaining = health_dict(codes, sizes)["colliding_items"]
  if collision == "suffix" or (collision == "sinkhorn" and remaining and not shared_ids):
    codes = append_suffix(codes, suffix_size)
    sizes = sizes + (int(suffix_size),)
  elif remaining and not shared_ids:
    raise ConfigError(f"{remaining} items share a semantic ID and tokenizer.collision='none': "
                     "use 'suffix' or 'sinkhorn', or tokenizer.shared_ids=True")
  elif collision not in ("none", "sinkhorn"):
    raise ConfigError(f"tokenizer.collision must be suffix|sinkhorn|none, got {collision!r}")
  stats["final"] = health_dict(codes, sizes)
  return CodeTable(codes, sizes, stats, fp)
