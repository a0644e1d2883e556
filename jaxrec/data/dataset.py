"""The in-memory data set every reader produces and everything downstream consumes.

Shape letters: N items, U users, I interactions, D feature width, C code levels.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import numpy as np

from jaxrec.errors import DataError


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Users' chronological item sequences in CSR form plus named item features.

  offsets_U1: int64 [U + 1]; user u's items are items_I[offsets[u]:offsets[u + 1]].
  items_I: int32 [I], item ids in 0..N-1, oldest first.
  features: name -> float32 [N, D].
  codes_NxC: optional int32 [N, C] semantic IDs made elsewhere (e.g. LETTER's index.json).
  """
  name: str
  n_items: int
  offsets_U1: np.ndarray
  items_I: np.ndarray
  features: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
  codes_NxC: Optional[np.ndarray] = None
  code_sizes: Optional[Sequence[int]] = None  # codebook size per level of codes_NxC
  user_keys: Optional[Sequence[str]] = None   # original user identifiers, row order
  item_keys: Optional[Sequence[str]] = None   # original item identifiers, id order
  item_text: Optional[Sequence[Mapping[str, str]]] = None  # per item id: field -> text

  @property
  def n_users(self) -> int:
    return len(self.offsets_U1) - 1

  @property
  def n_interactions(self) -> int:
    return int(self.offsets_U1[-1])

  @property
  def lengths_U(self) -> np.ndarray:
    return np.diff(self.offsets_U1)

  def sequence(self, u: int) -> np.ndarray:
    return self.items_I[self.offsets_U1[u]:self.offsets_U1[u + 1]]

  def item_counts(self) -> np.ndarray:
    return np.bincount(self.items_I, minlength=self.n_items)

  def stats(self) -> dict:
    """Summary statistics a person checks a data set against."""
    lengths = self.lengths_U
    return {
        "name": self.name,
        "users": self.n_users,
        "items": self.n_items,
        "interactions": self.n_interactions,
        "seq_len_mean": round(float(lengths.mean()), 2) if len(lengths) else 0.0,
        "seq_len_min": int(lengths.min()) if len(lengths) else 0,
        "seq_len_max": int(lengths.max()) if len(lengths) else 0,
        "density": float(self.n_interactions) / max(1, self.n_users * self.n_items),
        "features": {k: list(v.shape) for k, v in self.features.items()},
        "codes": None if self.codes_NxC is None else list(self.codes_NxC.shape),
        "item_text_fields": (sorted({f for t in self.item_text for f in t})
                             if self.item_text is not None else None),
    }


def from_sequences(name, sequences, n_items, **kwargs) -> Dataset:
  """Builds a Dataset from a list of per-user item id sequences."""
  lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
  offsets = np.zeros(len(sequences) + 1, np.int64)
  np.cumsum(lengths, out=offsets[1:])
  items = (np.concatenate([np.asarray(s, np.int32) for s in sequences])
           if sequences else np.zeros(0, np.int32))
  return Dataset(name=name, n_items=int(n_items), offsets_U1=offsets,
                 items_I=items.astype(np.int32), **kwargs)


def validate_features(path, name, matrix, n_items) -> np.ndarray:
  """Checks a feature matrix: 2-D, one row per item, finite. Returns it as float32."""
  if matrix.ndim != 2:
    raise DataError(path, None, f"feature '{name}' must be 2-D [n_items, d], got shape {matrix.shape}")
  if matrix.shape[0] != n_items:
    raise DataError(path, None, f"feature '{name}' has {matrix.shape[0]} rows but the data set "
                    f"has {n_items} items (row i must be item i)")
  if not np.issubdtype(matrix.dtype, np.number) or np.issubdtype(matrix.dtype, np.complexfloating):
    raise DataError(path, None, f"feature '{name}' has dtype {matrix.dtype}: expected real "
                    "numbers (float or integer)")
  original = np.asarray(matrix)
  bad = ~np.isfinite(original)
  if bad.any():
    row, col = np.argwhere(bad)[0]
    raise DataError(path, f"row {row}", f"feature '{name}' has a non-finite value "
                    f"({original[row, col]}) at column {col} ({int(bad.any(1).sum())} bad rows in all)")
  with np.errstate(over="ignore"):           # reported below, with the value
    matrix = original.astype(np.float32)
  big = ~np.isfinite(matrix)
  if big.any():
    row, col = np.argwhere(big)[0]
    raise DataError(path, f"row {row}", f"feature '{name}' has the value {original[row, col]} at "
                    f"column {col}, beyond float32's range (3.4e38), in which jaxrec computes: "
                    "rescale the feature")
  return matrix


def drop_short_users(ds: Dataset, min_len: int, policy: str, source: str) -> Dataset:
  """Removes users with fewer than `min_len` items ('drop', counted warning) or fails ('error')."""
  lengths = ds.lengths_U
  short = np.flatnonzero(lengths < min_len)
  if len(short) == 0:
    return ds
  if policy == "error":
    u = int(short[0])
    key = ds.user_keys[u] if ds.user_keys is not None else u
    raise DataError(source, f"user {key!r}", f"has {int(lengths[u])} interactions, the protocol "
                    f"needs at least {min_len} ({len(short)} such users; set "
                    f"data.short_users='drop' to drop them)")
  if policy != "drop":
    raise ValueError(f"data.short_users must be 'drop' or 'error', got {policy!r}")
  import logging
  logging.warning("%s: dropped %d of %d users with fewer than %d interactions",
                  source, len(short), ds.n_users, min_len)
  keep = np.flatnonzero(lengths >= min_len)
  seqs = [ds.sequence(u) for u in keep]
  keys = None if ds.user_keys is None else [ds.user_keys[u] for u in keep]
  return dataclasses.replace(from_sequences(ds.name, seqs, ds.n_items), features=ds.features,
                             codes_NxC=ds.codes_NxC, code_sizes=ds.code_sizes, user_keys=keys,
                             item_keys=ds.item_keys, item_text=ds.item_text)
