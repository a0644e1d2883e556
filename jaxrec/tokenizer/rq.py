"""Residual quantization: one pure function shared by every tokenizer.

Shape letters: B batch, C code levels, K codebook size, D code width.

Per-level assignment modes (static tuple, one entry per level):
  "hard"     nearest code, straight-through estimator (TIGER, LETTER, ETEGRec)
  "gumbel"   Gumbel-softmax mixture in training, nearest code at inference (SimCIT)
  "sinkhorn" balanced assignment over the batch in training (LETTER's last level),
             nearest code at inference; computed in log space, stable in float32

Where gradients stop between levels (`residual_grad`):
  "stop"    (default) the next level's residual is stop_gradient(r - e). This is what the
            official LETTER and ETEGRec code does (`residual = residual - x_res` with
            x_res the straight-through output), so deeper levels' commitment terms do not
            reach the encoder; the encoder learns from level 1's commitment and from
            everything that uses the straight-through quantized vector.
  "through" the next residual is r - stop_gradient(e), so every level's commitment term
            reaches the encoder (the RQ-VAE paper's formulation).
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax
import jax
import jax.numpy as jnp

MODES = ("hard", "gumbel", "sinkhorn")
sg = jax.lax.stop_gradient


@flax.struct.dataclass
class RQOutput:
  codes_BxC: jax.Array        # int32 chosen code per level
  quantized_BxD: jax.Array    # sum of chosen code vectors, straight-through w.r.t. z
  residuals_BxCxD: jax.Array  # the residual entering each level (level 0: z)
  dist_BxCxK: jax.Array       # squared distance of each level's residual to each code
  codebook_loss: jax.Array    # scalar: ||sg(r) - e||^2, reduced over levels
  commit_loss: jax.Array      # scalar: ||r - sg(e)||^2, reduced over levels
  loss: jax.Array             # codebook_loss + beta * commit_loss


def squared_distances(x_BxD, codebook_KxD):
  """||x - c||^2 for every pair, via the expanded form (one matmul)."""
  x2 = jnp.sum(x_BxD * x_BxD, axis=-1, keepdims=True)
  c2 = jnp.sum(codebook_KxD * codebook_KxD, axis=-1)
  return jnp.maximum(x2 - 2.0 * x_BxD @ codebook_KxD.T + c2[None, :], 0.0)


def sinkhorn_log(cost_BxK, epsilon: float, iters: int, mask_B=None):
  """Balanced assignment plan log Q [B, K]: every code receives mass 1/K, every item 1/B.

  Follows LETTER's sinkhorn (distances rescaled to [-1, 1] over the batch, Q ~ exp(-d/eps),
  alternate per-item then per-code normalisation), but in log space: LETTER runs it in
  float64 because exp(-d / 0.003) overflows float32; logsumexp never does."""
  mask_B = jnp.ones(cost_BxK.shape[0], bool) if mask_B is None else mask_B
  m = mask_B[:, None]
  hi = jnp.max(jnp.where(m, cost_BxK, -jnp.inf))
  lo = jnp.min(jnp.where(m, cost_BxK, jnp.inf))
  mid = (hi + lo) / 2
  amp = hi - mid + 1e-5
  log_q = jnp.where(m, -((cost_BxK - mid) / amp) / epsilon, -jnp.inf)
  n_b = jnp.maximum(jnp.sum(mask_B), 1).astype(cost_BxK.dtype)
  log_k = jnp.log(float(cost_BxK.shape[1]))

  def body(_, lq):
    row = jax.nn.logsumexp(lq, axis=1, keepdims=True)
    lq = jnp.where(m, lq - row - jnp.log(n_b), -jnp.inf)
    col = jax.nn.logsumexp(lq, axis=0, keepdims=True)
    return jnp.where(m, lq - col - log_k, -jnp.inf)

  return jax.lax.fori_loop(0, iters, body, log_q)


def masked_mean(x_B, mask_B=None):
  """Mean over the rows of `mask_B` (all rows when None) of each row's mean over its other
  axes; rows outside the mask are excluded by selection, so they may hold inf."""
  if mask_B is None:
    return jnp.mean(x_B)
  per_row = jnp.mean(x_B.reshape(x_B.shape[0], -1), axis=-1)
  return (jnp.sum(jnp.where(mask_B, per_row, 0.0)) /
          jnp.maximum(jnp.sum(mask_B.astype(per_row.dtype)), 1.0))


def residual_quantize(z_BxD, codebooks_CxKxD, *, modes: Sequence[str], train: bool,
                      beta: float = 0.25, level_reduce: str = "mean",
                      residual_grad: str = "stop", gumbel_tau: float = 1.0,
                      gumbel_scale: float = 1.0,
                      sinkhorn_eps: float = 0.003, sinkhorn_iters: int = 50,
                      key: Optional[jax.Array] = None, mask_B=None) -> RQOutput:
  """Quantizes z level by level against `codebooks`; see the module docstring for modes.
  `mask_B` (optional) marks the rows that count: Sinkhorn balances over them and the
  codebook / commitment losses average over them."""
  n_levels = codebooks_CxKxD.shape[0]
  if len(modes) != n_levels:
    raise ValueError(f"{len(modes)} assignment modes for {n_levels} levels")
  for mode in modes:
    if mode not in MODES:
      raise ValueError(f"unknown assignment mode {mode!r}; expected one of {MODES}")
  if residual_grad not in ("stop", "through"):
    raise ValueError(f"residual_grad must be 'stop' or 'through', got {residual_grad!r}")
  residual = z_BxD
  hard_sum = jnp.zeros_like(z_BxD)
  soft_sum = jnp.zeros_like(z_BxD)
  any_hard = False
  codes, residuals, dists, cb_terms, commit_terms = [], [], [], [], []
  for level, mode in enumerate(modes):
    cb = codebooks_CxKxD[level]
    dist = squared_distances(residual, cb)
    soft = mode == "gumbel" and train
    if mode == "sinkhorn" and train:
      code = jnp.argmax(sinkhorn_log(sg(dist), sinkhorn_eps, sinkhorn_iters, mask_B), axis=-1)
    else:
      code = jnp.argmin(dist, axis=-1)
    if soft:
      if key is None:
        raise ValueError("gumbel assignment in training needs a PRNG key")
      g = gumbel_scale * jax.random.gumbel(jax.random.fold_in(key, level), dist.shape,
                                           dist.dtype)
      weights = jax.nn.softmax((-dist + g) / gumbel_tau, axis=-1)
      vec = weights @ cb
      soft_sum = soft_sum + vec
    else:
      vec = cb[code]
      hard_sum = hard_sum + vec
      any_hard = True
    codes.append(code.astype(jnp.int32))
    residuals.append(residual)
    dists.append(dist)
    cb_terms.append(masked_mean(jnp.square(sg(residual) - vec), mask_B))
    commit_terms.append(masked_mean(jnp.square(residual - sg(vec)), mask_B))
    if residual_grad == "stop":
      residual = sg(residual - vec)
    else:
      residual = residual - (vec if soft else sg(vec))
  # Straight-through: value = sum of chosen vectors, gradient w.r.t. z = identity for the
  # hard levels; soft (gumbel) levels keep their own differentiable mixture.
  quantized = soft_sum
  if any_hard:
    quantized = quantized + z_BxD + sg(hard_sum - z_BxD)
  reduce = jnp.mean if level_reduce == "mean" else jnp.sum
  if level_reduce not in ("mean", "sum"):
    raise ValueError(f"level_reduce must be 'mean' or 'sum', got {level_reduce!r}")
  codebook_loss = reduce(jnp.stack(cb_terms))
  commit_loss = reduce(jnp.stack(commit_terms))
  return RQOutput(
      codes_BxC=jnp.stack(codes, axis=1),
      quantized_BxD=quantized,
      residuals_BxCxD=jnp.stack(residuals, axis=1),
      dist_BxCxK=jnp.stack(dists, axis=1),
      codebook_loss=codebook_loss,
      commit_loss=commit_loss,
      loss=codebook_loss + beta * commit_loss,
  )
