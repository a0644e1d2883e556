"""Evaluation of a run's parameters: ranking metrics of a split (decoded through the run's
`eval_fn`), the teacher-forced validation loss, the most-popular baseline, the selection
rule that picks the best checkpoint, and next-item recommendations for given users.

Shape letters: U users, L history items, C code levels.
"""
from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np

from jaxrec import distributed, metrics
from jaxrec.answer import rank_histories
from jaxrec.data import eval_batches, training_interactions
from jaxrec.training.run import Run


def evaluate_split(run: Run, params, split_name: str, on_batch=None, eval_fn=None) -> dict:
  """Decoding (or ranking) over a split: metrics over the full catalogue, plus timing.
  `on_batch(batch, items)`, if given, sees each batch (this process's rows, host arrays)
  with the items ranked for it [B, R] (e.g. to write per-user predictions); `eval_fn`
  replaces the run's (e.g. the other decoding mode)."""
  t0 = time.time()
  total = None
  bs = run.cfg.train.eval_batch_size
  eval_fn = eval_fn or run.eval_fn
  for batch in eval_batches(run.dataset, run.splits[split_name], bs, run.buckets, run.rows(bs)):
    sums, items = eval_fn(params, run.shard(batch), *run.code_args)
    total = metrics.accumulate(total, sums)
    if on_batch is not None:
      on_batch(batch, distributed.local_rows(items))
  out = metrics.finalize(total)
  out["decode_s"] = round(time.time() - t0, 2)
  out["users"] = int(total["count"])
  return out


def target_ranks(n_users: int):
  """`(ranks, on_batch)`: `evaluate_split`'s on_batch that records each evaluated user's
  target rank among the items ranked for it (1-based; 0: not among them) into `ranks`
  [n_users] int16 (-1: a user the split does not evaluate). What a run's metrics are made
  of, user by user: paired comparisons of two runs, or of groups of users, read it."""
  ranks = np.full(n_users, -1, np.int16)

  def record(batch, items):
    real = batch["weight_B"] > 0
    hit = np.asarray(items) == batch["target_B"][:, None]
    rank = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, 0)
    ranks[batch["user_B"][real]] = rank[real]
  return ranks, record


def split_loss(run: Run, params, split_name: str = "valid") -> float:
  """The teacher-forced loss on a split (mean over users; no dropout). On validation, what
  train.select='loss' selects by (LETTER's official trainer)."""
  total, count = 0.0, 0.0
  bs = run.cfg.train.eval_batch_size
  for batch in eval_batches(run.dataset, run.splits[split_name], bs, run.buckets, run.rows(bs)):
    s, c = run.loss_fn(params, run.shard(batch), *run.code_args)
    total, count = total + float(s), count + float(c)
  return total / max(count, 1.0)


class Selection:
  """How checkpoints compete (train.select): valid NDCG@10 of decoded recommendations
  (higher is better), or the teacher-forced valid loss (lower is better)."""

  def __init__(self, select: str):
    self.by_loss = select == "loss"
    self.key = "valid_loss" if self.by_loss else "ndcg@10"
    self.gain = "loss decrease" if self.by_loss else "NDCG@10 gain"

  def evaluate(self, run: Run, params) -> dict:
    if self.by_loss:
      return {"valid_loss": split_loss(run, params)}
    return evaluate_split(run, params, "valid")

  def better(self, valid: dict, best) -> bool:
    """Whether `valid` beats the best record so far (None: nothing yet)."""
    if best is None:
      return True
    if self.by_loss:
      return valid[self.key] < best[self.key]
    return valid[self.key] > best[self.key]

  def describe(self, valid: dict) -> str:
    return f"loss {valid['valid_loss']:.5f}" if self.by_loss else fmt(valid)


def fmt(m: dict) -> str:
  return ", ".join(f"{k} {m[k]:.4f}" for k in ("recall@5", "recall@10", "ndcg@5", "ndcg@10"))


def most_popular(run: Run):
  """The items of the training interactions (all but each user's last two) by count:
  (items [N], counts [N]), most popular first (ties by item id)."""
  ds = run.dataset
  counts = np.bincount(ds.items_I[training_interactions(ds)], minlength=ds.n_items)
  order = np.argsort(-counts, kind="stable")
  return order, counts[order]


def popularity_baseline(run: Run) -> dict:
  """Most-popular items ranked identically for every user, on the same splits."""
  ds = run.dataset
  top = most_popular(run)[0][:metrics.RANKED]
  out = {}
  for name in ("valid", "test"):
    targets = ds.items_I[run.splits[name].end_S]
    out[name] = metrics.rank_metrics_np(np.tile(top, (len(targets), 1)), targets)
  return out


def recommend_histories(run: Run, params, histories, users, k: int = 10,
                        batch_size: int = 0):
  """Next-item recommendations after any histories (item ids, oldest first; the last
  data.max_len count), by the run's model (a beam of train.beam, k <= beam, for semantic
  IDs; the full ranking for SASRec): (items [U, k], scores [U, k], the items' IDs [U, k, C]
  or None for models over item ids); -1 where fewer than k items were found. `users` are
  user rows of the data set (the user token's bucket) or any integers. Batches of
  `batch_size` (default train.eval_batch_size) are padded to a fixed shape."""
  cfg = run.cfg
  if run.codes is not None and k > cfg.train.beam:
    raise ValueError(f"k={k}: a beam of train.beam={cfg.train.beam} returns at most that many")
  k = min(k, run.dataset.n_items)
  bs = batch_size or cfg.train.eval_batch_size

  def call(hist, mask, user):
    return run.recommend_fn(params, jnp.asarray(hist), jnp.asarray(mask), jnp.asarray(user),
                            *run.code_args, k=k)
  return rank_histories(call, histories, users, k, cfg.data.max_len, run.buckets, bs,
                        lambda real: bs, run.codes)     # batches padded to one fixed shape


def recommend(run: Run, params, users, k: int = 10):
  """`recommend_histories` after each data-set user's whole sequence (user rows)."""
  users = np.atleast_1d(np.asarray(users))
  ds = run.dataset
  seqs = [ds.items_I[ds.offsets_U1[u]:ds.offsets_U1[u + 1]] for u in users]
  return recommend_histories(run, params, seqs, users, k)
