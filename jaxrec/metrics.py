"""Recall@K and NDCG@K from ranked item lists, one relevant item per user (the field's
leave-one-out definitions: Recall@K = hit within the top K, NDCG@K = 1 / log2(rank + 2)).

Shape letters: U users, R ranked list length.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

KS = (1, 5, 10, 20, 50, 100)     # those up to the ranked list's length are reported
NDCG_KS = (5, 10, 20, 50, 100)
RANKED = 20                      # the list a run ranks (train.beam for the generative ones);
                                 # `jaxrec.evaluate --beam 100` ranks more (R@50, R@100)


def _names(ks, ndcg_ks):
  return [f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ndcg_ks]


def rank_metric_sums(ranked_UxR, target_U, weight_U, ks: Sequence[int] = KS,
                     ndcg_ks: Sequence[int] = NDCG_KS):
  """Sums (not means) of each metric over users weighted by `weight_U` (0 for padding);
  jit-friendly. Ranked entries of -1 (no valid item) never match. A K above the list
  length R (a beam narrower than K) is not reported: it would repeat the metric at R."""
  r = ranked_UxR.shape[1]
  ks, ndcg_ks = [k for k in ks if k <= r], [k for k in ndcg_ks if k <= r]
  hit = (ranked_UxR == target_U[:, None]) & (target_U[:, None] >= 0)
  found = jnp.any(hit, axis=1)
  rank = jnp.where(found, jnp.argmax(hit, axis=1), jnp.iinfo(jnp.int32).max)  # miss: never < k
  out = {}
  for k in ks:
    out[f"recall@{k}"] = jnp.sum(weight_U * (rank < k))
  for k in ndcg_ks:
    out[f"ndcg@{k}"] = jnp.sum(weight_U * jnp.where(rank < k, 1.0 / jnp.log2(rank + 2.0), 0.0))
  out["count"] = jnp.sum(weight_U)
  return out


ERR_KS = (5, 10, 20)


def invalid_id_sums(items_UxR, scores_UxR, weight_U, ks: Sequence[int] = ERR_KS):
  """err@K (ActionPiece's, MiniOneRec's CC): per user, the share of the first K returned
  IDs that no item has (item -1 with a finite score: free decoding only), summed over
  users weighted by `weight_U`."""
  invalid = ((items_UxR < 0) & jnp.isfinite(scores_UxR)).astype(jnp.float32)
  return {f"err@{k}": jnp.sum(weight_U * jnp.mean(invalid[:, :k], axis=1))
          for k in ks if k <= items_UxR.shape[1]}


def decoded_sums(items_UxR, scores_UxR, target_U, weight_U) -> dict:
  """A beam search's metric sums: the rank metrics against each user's target (the
  target's representative item, with shared IDs) and err@K."""
  sums = rank_metric_sums(items_UxR, target_U, weight_U)
  sums.update(invalid_id_sums(items_UxR, scores_UxR, weight_U))
  return sums


def finalize(sums: dict) -> dict:
  """Divides accumulated sums by the user count."""
  n = max(float(sums["count"]), 1.0)
  return {k: float(v) / n for k, v in sums.items() if k != "count"}


def rank_metrics_np(ranked_UxR, target_U, ks: Sequence[int] = KS, ndcg_ks: Sequence[int] = NDCG_KS):
  """Host convenience: means of each metric."""
  ranked = np.asarray(ranked_UxR)
  sums = rank_metric_sums(jnp.asarray(ranked), jnp.asarray(target_U),
                          jnp.ones(len(target_U), jnp.float32), ks, ndcg_ks)
  return finalize(jax.device_get(sums))


def accumulate(total: dict | None, sums: dict) -> dict:
  sums = jax.device_get(sums)
  if total is None:
    return {k: float(v) for k, v in sums.items()}
  return {k: total[k] + float(v) for k, v in sums.items()}
