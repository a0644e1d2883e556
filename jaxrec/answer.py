"""Requests in the data set's own keys answered by any ranking function (and the histories
batched for one, `rank_histories`): the part of
`jaxrec.recommend` that the in-process command, an exported model (`jaxrec.served`) and the
HTTP server (`jaxrec.serve`) share. Pure Python and numpy: no model, no jax.

A request is {"user": key or null, "history": [item keys, oldest first]}. Its answer is
{"user", "items": [keys], "scores": [...], "ids": [[codes], ...]} ("ids" for models over
semantic IDs); "unknown": the history's items the data set does not have (left out);
"fallback": "most_popular" when nothing of the history is known (scores are then training
counts).
"""
from __future__ import annotations

import json
from typing import Callable, Optional, Sequence

import numpy as np

from jaxrec.errors import DataError
from jaxrec.fingerprint import fingerprint

FIELDS = ("user", "history")

# (histories as item ids, user rows, how many) -> (items [U, n], scores [U, n],
# IDs [U, n, C] or None); -1 where fewer were found
Ranker = Callable[[list, list, int], tuple]


def rank_histories(call, histories, users, n: int, max_len: int, buckets, batch_size: int,
                   rows_of: Callable[[int], int], codes_NxC=None):
  """A model's ranking of the items after each history, batch by batch: histories (item ids,
  oldest first; the last `max_len` count) padded to the smallest bucket that holds a batch's
  longest, `rows_of(real rows)` rows per batch; `call(history [R, L] int32, mask [R, L] bool,
  user [R] int32)` -> (items [R, >= n], scores). Returns (items [U, n], scores [U, n], their
  IDs [U, n, C] from `codes_NxC`, or None); -1 where fewer than n were found. `users` are
  user rows or any integers (taken modulo int32's range)."""
  seqs = [np.asarray(h, np.int32)[-max_len:] for h in histories]
  users = np.asarray(users, np.int64) % np.iinfo(np.int32).max
  items, scores = [], []
  for start in range(0, len(seqs), batch_size):
    chunk = seqs[start:start + batch_size]
    rows = rows_of(len(chunk))
    length = next(b for b in buckets if b >= max(max(len(s) for s in chunk), 1))
    hist, mask = np.zeros((rows, length), np.int32), np.zeros((rows, length), bool)
    for i, s in enumerate(chunk):
      hist[i, :len(s)], mask[i, :len(s)] = s, True
    user = np.zeros(rows, np.int32)
    user[:len(chunk)] = users[start:start + batch_size]
    it, sc = call(hist, mask, user)
    items.append(np.asarray(it)[:len(chunk), :n])
    scores.append(np.asarray(sc)[:len(chunk), :n])
  items = np.concatenate(items) if items else np.zeros((0, n), np.int32)
  scores = np.concatenate(scores) if scores else np.zeros((0, n), np.float32)
  ids = None
  if codes_NxC is not None:
    codes_NxC = np.asarray(codes_NxC)
    ids = np.where(items[..., None] >= 0, codes_NxC[np.maximum(items, 0)], -1)
  return items, scores, ids


def check(req, where: str, record: str) -> dict:
  """A request as {"user", "history": [str]}; a DataError naming `where` and `record` else."""
  if not isinstance(req, dict):
    raise DataError(where, record, "expected an object {\"user\": ..., \"history\": [...]}")
  unknown = set(req) - set(FIELDS)
  if unknown:
    raise DataError(where, record, f"unknown field(s) {sorted(unknown)}: expected "
                    "\"user\" and \"history\"")
  history = req.get("history")
  if not isinstance(history, list) or not all(
      isinstance(h, (str, int)) and not isinstance(h, bool) for h in history):
    raise DataError(where, record, "\"history\" must be a list of item keys")
  user = req.get("user")
  if user is not None and not isinstance(user, (str, int)):
    raise DataError(where, record, "\"user\" must be a key (a string or an integer) or null")
  return {"user": user, "history": [str(h) for h in history]}


def parse(line: str, where: str, number: int) -> dict:
  """One JSON line as a request; a DataError naming the line for anything else."""
  try:
    req = json.loads(line)
  except json.JSONDecodeError as e:
    raise DataError(where, f"line {number}", f"not JSON ({e.msg} at column {e.colno})") from e
  return check(req, where, f"line {number}")


class Answerer:
  """Answers requests in keys with `rank`, a model's ranking over item ids.

  item_keys: the key of each item id; user_keys: the key of each user row (the row is the
  user token's bucket; a new user gets a stable number from its key); popular / counts:
  the items by training count, for histories of which nothing is known; ask: the most
  items `rank` can return (a beam, or the catalogue for full ranking)."""

  def __init__(self, rank: Ranker, item_keys: Sequence[str], user_keys: Sequence,
               popular, counts, k: int, ask: int, exclude_history: bool = False):
    self.rank, self.keys = rank, list(item_keys)
    self.item_of = {key: i for i, key in enumerate(self.keys)}
    self.user_of = {str(u): i for i, u in enumerate(user_keys)}
    self.popular, self.counts = np.asarray(popular), np.asarray(counts)
    self.k, self.ask, self.exclude = k, min(ask, len(self.keys)), exclude_history

  def user_row(self, user) -> int:
    """The user's row (its user-token bucket), or a stable number for a new user."""
    if user is None:
      return 0
    return self.user_of.get(str(user), int(fingerprint(str(user))[:8], 16))

  def answer(self, requests: list, k: Optional[int] = None) -> list:
    """One answer per (checked) request, in order; `k` items each (default self.k)."""
    k = k or self.k
    known = [[self.item_of[h] for h in r["history"] if h in self.item_of] for r in requests]
    asked = [i for i, h in enumerate(known) if h]
    out = [{"user": r["user"]} for r in requests]
    if asked:
      want = min(self.ask, k + (max(len(known[i]) for i in asked) if self.exclude else 0))
      items, scores, ids = self.rank([known[i] for i in asked],
                                     [self.user_row(requests[i]["user"]) for i in asked], want)
      for row, i in enumerate(asked):
        keep = [j for j in range(want) if items[row, j] >= 0 and not (
            self.exclude and items[row, j] in known[i])][:k]
        out[i].update(items=[self.keys[items[row, j]] for j in keep],
                      scores=[round(float(scores[row, j]), 6) for j in keep])
        if ids is not None:
          out[i]["ids"] = [[int(c) for c in ids[row, j]] for j in keep]
    for i, r in enumerate(requests):
      unknown = [h for h in r["history"] if h not in self.item_of]
      if unknown:
        out[i]["unknown"] = unknown
      if not known[i]:                  # nothing known to exclude either
        out[i].update(items=[self.keys[j] for j in self.popular[:k]],
                      scores=[int(c) for c in self.counts[:k]], fallback="most_popular")
    return out
