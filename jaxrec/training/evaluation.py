"""Evaluation of a run's parameters: ranking metrics of a split (decoded through the run's
`eval_fn`), the teacher-forced validation loss, the most-popular baseline, the selection
rule that picks the best checkpoint, and next-item recommendations for given users.

Shape letters: U users, L history items, C code levels.
"""
from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np

from jaxrec import metrics
from jaxrec.data import eval_batches
from jaxrec.recommender import steps
from jaxrec.training.run import Run


def evaluate_split(run: Run, params, split_name: str) -> dict:
  """Decoding (or ranking) over a split: metrics over the full catalogue, plus timing."""
  t0 = time.time()
  total = None
  bs = run.cfg.train.eval_batch_size
  for batch in eval_batches(run.dataset, run.splits[split_name], bs, run.buckets, run.rows(bs)):
    sums, _ = run.eval_fn(params, run.shard(batch), *run.code_args)
    total = metrics.accumulate(total, sums)
  out = metrics.finalize(total)
  out["decode_s"] = round(time.time() - t0, 2)
  out["users"] = int(total["count"])
  return out


def valid_loss(run: Run, params) -> float:
  """The teacher-forced code loss on the validation split (mean over users; no dropout):
  what train.select='loss' selects by (LETTER's official trainer)."""
  total, count = 0.0, 0.0
  bs = run.cfg.train.eval_batch_size
  for batch in eval_batches(run.dataset, run.splits["valid"], bs, run.buckets, run.rows(bs)):
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
      return {"valid_loss": valid_loss(run, params)}
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


def popularity_baseline(run: Run) -> dict:
  """Most-popular items of the training interactions (all but each user's last two),
  ranked identically for every user, on the same splits."""
  ds = run.dataset
  keep = np.ones(ds.n_interactions, bool)
  ends = ds.offsets_U1[1:]
  keep[ends - 1] = False
  keep[ends - 2] = False
  counts = np.bincount(ds.items_I[keep], minlength=ds.n_items)
  top = np.argsort(-counts, kind="stable")[:max(metrics.KS)]
  out = {}
  for name in ("valid", "test"):
    targets = ds.items_I[run.splits[name].end_S]
    out[name] = metrics.rank_metrics_np(np.tile(top, (len(targets), 1)), targets)
  return out


def recommend(run: Run, params, users, k: int = 10):
  """Next-item recommendations after each user's whole sequence (its last data.max_len
  items), by beam search of width train.beam (train.decode): (items [U, k], log-probability
  scores [U, k], the items' IDs [U, k, C]); -1 where the beam found fewer than k items."""
  if run.codes is None:
    raise ValueError(f"recommend() decodes semantic IDs; {run.cfg.method} ranks item ids "
                     "(jaxrec.recommender.sasrec.scores gives its scores)")
  users = np.atleast_1d(np.asarray(users))
  ds, max_len = run.dataset, run.cfg.data.max_len
  seqs = [ds.items_I[ds.offsets_U1[u]:ds.offsets_U1[u + 1]][-max_len:] for u in users]
  length = next(b for b in run.buckets if b >= max(len(s) for s in seqs))
  hist = np.zeros((len(users), length), np.int32)
  mask = np.zeros((len(users), length), bool)
  for i, s in enumerate(seqs):
    hist[i, :len(s)], mask[i, :len(s)] = s, True
  tokens, tok_mask = steps.history_tokens(run.codes, jnp.asarray(hist), jnp.asarray(mask),
                                          run.model.cfg)
  items, scores = steps.generate(params, tokens, tok_mask, jnp.asarray(users, jnp.int32),
                                 run.tables, model=run.model, beam=run.cfg.train.beam,
                                 constrained=run.cfg.train.decode == "constrained")
  items, scores = np.asarray(items)[:, :k], np.asarray(scores)[:, :k]
  ids = np.where(items[..., None] >= 0, np.asarray(run.codes)[np.maximum(items, 0)], -1)
  return items, scores, ids
