"""Leave-one-out splits and the grain batch pipeline with length buckets.

A sample is (user, history window, target) held as indices into the data set's CSR
arrays. Batches carry item *ids* (never codes): mapping to codes happens on device, so a
method that re-tokenizes during training never rebuilds this pipeline.

Batch fields (B batch, L bucket length):
  history_BxL int32 item ids, left-aligned, 0 where padded
  mask_BxL    bool, True on real history positions
  target_B    int32 target item id
  user_B      int32 user row
  weight_B    float32, 1 for real samples, 0 for the padding of a last partial batch
and, with `BatchIterator(extra=...)`, the fields it adds to each training batch
(`data.align`'s alignment items: jaxrec/data/align.py).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Optional, Sequence

import grain
import numpy as np

from jaxrec.data.dataset import Dataset


@dataclasses.dataclass(frozen=True)
class Split:
  """Samples of one split: the target is items_I[end_S], the history items_I[start_S:end_S]."""
  name: str
  user_S: np.ndarray
  start_S: np.ndarray
  end_S: np.ndarray

  def __len__(self):
    return len(self.user_S)

  @property
  def hist_len_S(self) -> np.ndarray:
    return (self.end_S - self.start_S).astype(np.int32)


def leave_one_out(ds: Dataset, max_len: int) -> dict[str, Split]:
  """Test target = last item, validation = second to last, train = every earlier prefix
  (targets at positions 1..n-3), each history capped at the last `max_len` items."""
  lengths = ds.lengths_U
  if (lengths < 3).any():
    raise ValueError("leave_one_out needs at least 3 items per user; drop short users first")
  off = ds.offsets_U1[:-1]
  users = np.arange(ds.n_users, dtype=np.int32)

  def make(name, user, end):
    start = np.maximum(off[user], end - max_len)
    return Split(name, user.astype(np.int32), start.astype(np.int64), end.astype(np.int64))

  n_train = np.maximum(lengths - 3, 0)
  tr_user = np.repeat(users, n_train)
  # position within each user's train block: 0..n_train-1 -> target position 1..n-3
  first = np.repeat(np.cumsum(n_train) - n_train, n_train)
  tr_pos = np.arange(len(tr_user)) - first + 1
  return {
      "train": make("train", tr_user, off[tr_user] + tr_pos),
      "valid": make("valid", users, off + lengths - 2),
      "test": make("test", users, off + lengths - 1),
  }


def training_interactions(ds: Dataset) -> np.ndarray:
  """bool [I]: the interactions of `leave_one_out`'s training part (all but each user's
  last two items)."""
  keep = np.ones(ds.n_interactions, bool)
  ends = ds.offsets_U1[1:]
  keep[ends - 1] = False
  keep[ends - 2] = False
  return keep


def sequence_windows(ds: Dataset, max_len: int) -> Split:
  """Training samples of a model that predicts every position (SASRec): each user's training
  targets (positions 1..n-3, as in `leave_one_out`) cut into windows of up to `max_len`,
  from the most recent backwards. A window reads items_I[start:end] and predicts
  items_I[start + 1:end + 1], so every training target is predicted exactly once per epoch."""
  lengths = ds.lengths_U
  n_targets = np.maximum(lengths - 3, 0)
  n_windows = -(-n_targets // max_len)
  user = np.repeat(np.arange(ds.n_users, dtype=np.int32), n_windows)
  j = np.arange(len(user)) - np.repeat(np.cumsum(n_windows) - n_windows, n_windows)
  end = n_targets[user] - j * max_len            # window j = 0 is the most recent
  start = np.maximum(end - max_len, 0)
  off = ds.offsets_U1[user]
  return Split("train", user, (off + start).astype(np.int64), (off + end).astype(np.int64))


def bucket_lengths(buckets: Sequence[int], max_len: int, shapes: str = "buckets",
                   backend: str = "cpu") -> tuple[int, ...]:
  """The lengths batches are padded to: the buckets sorted, clipped to max_len, always
  ending with max_len; or max_len alone (`shapes="max_len"`, or "auto" off the CPU)."""
  if shapes == "max_len" or (shapes == "auto" and backend != "cpu"):
    return (max_len,)
  return tuple(sorted({min(int(b), max_len) for b in buckets if b > 0} | {max_len}))


def plan_batches(split: Split, batch_size: int, buckets: Sequence[int], shuffle: bool,
                 seed: int, epoch: int, iid: bool = False,
                 group: int = 1) -> list[tuple[int, np.ndarray]]:
  """Groups samples by history-length bucket into fixed-size batches.

  Returns (bucket length, sample indices [batch_size], -1 for padding) per batch. With
  `shuffle`, samples and batch order are permuted by (seed, epoch).

  `iid` (the official codes' batches, `data.batching='iid'`): consecutive runs of the
  (permuted) samples, whatever their lengths, each padded to the smallest bucket that holds
  its longest history; only the last batch has padding rows. `group` > 1 (iid only,
  `data.whole_updates`: train.accumulate micro-batches make an update): the epoch has a
  multiple of `group` batches and ends on a whole update, the samples left after the full
  ones spread over its last `group` batches (each process's last, shorter batch under
  DDP's sharding; a trainer's update at the epoch's end), each padded to `batch_size`."""
  lens = split.hist_len_S
  bucket_of = np.searchsorted(np.asarray(buckets), lens, side="left")
  order = np.arange(len(split))
  rng = np.random.default_rng([seed, epoch])
  if shuffle:
    order = rng.permutation(order)
  if iid:
    n_full = len(order) // batch_size
    if group > 1:
      n_full = (-(-len(order) // (group * batch_size)) - 1) * group
    chunks = [order[s * batch_size:(s + 1) * batch_size] for s in range(n_full)]
    rest = order[n_full * batch_size:]
    if group > 1:
      chunks += np.array_split(rest, group)
    elif len(rest):
      chunks.append(rest)
    plan = []
    for chunk in chunks:
      length = int(buckets[int(bucket_of[chunk].max())]) if len(chunk) else int(buckets[0])
      plan.append((length, np.concatenate([chunk, np.full(batch_size - len(chunk), -1,
                                                           order.dtype)])))
    return plan
  order = order[np.argsort(bucket_of[order], kind="stable")]
  counts = np.bincount(bucket_of, minlength=len(buckets))
  plan, pos = [], 0
  for b, n in enumerate(counts):
    idx = order[pos:pos + n]
    pos += n
    for s in range(0, n, batch_size):
      chunk = idx[s:s + batch_size]
      if len(chunk) < batch_size:
        chunk = np.concatenate([chunk, np.full(batch_size - len(chunk), -1, chunk.dtype)])
      plan.append((int(buckets[b]), chunk))
  if shuffle:
    plan = [plan[i] for i in rng.permutation(len(plan))]
  return plan


def gather_batch(ds: Dataset, split: Split, length: int, idx: np.ndarray) -> dict[str, np.ndarray]:
  """Builds the padded numpy batch for sample indices `idx` (-1 = padding row)."""
  real = idx >= 0
  safe = np.where(real, idx, 0)
  start, end = split.start_S[safe], split.end_S[safe]
  n = (end - start)[:, None]
  pos = np.arange(length)[None, :]
  mask = (pos < n) & real[:, None]
  hist = np.where(mask, ds.items_I[np.where(mask, start[:, None] + pos, 0)], 0)
  return {
      "history_BxL": hist.astype(np.int32),
      "mask_BxL": mask,
      "target_B": np.where(real, ds.items_I[end], 0).astype(np.int32),
      "user_B": np.where(real, split.user_S[safe], 0).astype(np.int32),
      "weight_B": real.astype(np.float32),
  }


class BatchIterator:
  """Epoch-aware iterator over a grain MapDataset of planned batches.

  Its state ({"epoch", "grain"}) is JSON-serialisable: a restored iterator yields exactly
  the batches the original would have yielded next. `rows` (a multi-process run: this
  process's block of every batch) gathers only those rows of the planned batches, which are
  the same in every process. `extra(epoch, index)`: more fields for batch `index` of `epoch`
  (a function of those two only, so that a restored iterator adds the same)."""

  def __init__(self, ds: Dataset, split: Split, batch_size: int, buckets: Sequence[int],
               shuffle: bool, seed: int, epoch: int = 0, iid: bool = False,
               rows: slice = slice(None), extra: Optional[Callable[[int, int], dict]] = None,
               group: int = 1):
    self._args = (ds, split, batch_size, tuple(buckets), shuffle, seed, iid, group)
    self._rows = rows
    self._extra = extra
    self.epoch = epoch
    self._start_epoch(epoch)

  def _dataset(self, epoch):
    ds, split, batch_size, buckets, shuffle, seed, iid, group = self._args
    plan = plan_batches(split, batch_size, buckets, shuffle, seed, epoch, iid, group)
    rows, extra = self._rows, self._extra or (lambda epoch, index: {})
    return grain.MapDataset.source(list(enumerate(plan))).map(
        lambda p: {**gather_batch(ds, split, p[1][0], p[1][1][rows]), **extra(epoch, p[0])})

  def _start_epoch(self, epoch):
    self.epoch = epoch
    self._map = self._dataset(epoch)
    self._it = iter(self._map.to_iter_dataset())

  def __len__(self):
    """Batches per epoch."""
    return len(self._map)

  def epoch_batches(self) -> Iterator[dict]:
    """Yields the remaining batches of the current epoch, then advances to the next epoch."""
    for batch in self._it:
      yield batch
    self._start_epoch(self.epoch + 1)

  def lengths(self) -> list:
    """The history lengths the current epoch's batches are padded to (the shapes of its steps)."""
    ds, split, batch_size, buckets, shuffle, seed, iid, group = self._args
    return sorted({length for length, _ in plan_batches(split, batch_size, buckets, shuffle, seed,
                                                         self.epoch, iid, group)})

  def padding_batch(self, length: int) -> dict:
    """A batch of padding rows only, padded to `length` (this process's rows): the shapes and
    types of a real one, for compiling ahead."""
    ds, split, batch_size = self._args[:3]
    batch = gather_batch(ds, split, length, np.full(batch_size, -1)[self._rows])
    return {**batch, **(self._extra(0, 0) if self._extra else {})}

  def get_state(self) -> dict:
    return {"epoch": int(self.epoch), "grain": self._it.get_state()}

  def set_state(self, state: dict) -> None:
    self._start_epoch(int(state["epoch"]))
    self._it.set_state(state["grain"])


def eval_lengths(split: Split, batch_size: int, buckets: Sequence[int]) -> list:
  """The history lengths of an evaluation split's batches."""
  return sorted({length for length, _ in plan_batches(split, batch_size, buckets, shuffle=False,
                                                       seed=0, epoch=0)})


def eval_batches(ds: Dataset, split: Split, batch_size: int, buckets: Sequence[int],
                 rows: slice = slice(None)):
  """All batches of an evaluation split, in a fixed order (`rows` of each: as BatchIterator)."""
  for length, idx in plan_batches(split, batch_size, buckets, shuffle=False, seed=0, epoch=0):
    yield gather_batch(ds, split, length, idx[rows])
