"""Jitted k-means (k-means++ or random init), deterministic by key, and dead-code re-seeding.

Shape letters: N points, K clusters, D width.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxrec.tokenizer.rq import sinkhorn_log, squared_distances


# Points per chunk of a catalogue-wide assignment: the [chunk, K] distances are what is held
# at once (64 MiB for K = 256), so a 10M-item catalogue's k-means fits in memory.
CHUNK = 65536


def nearest(x_NxD, cents_KxD):
  """(nearest centre [N], its squared distance [N]), in chunks of CHUNK points."""
  def one(x_D):
    d = squared_distances(x_D[None], cents_KxD)[0]
    return jnp.argmin(d), jnp.min(d)
  return jax.lax.map(one, x_NxD, batch_size=CHUNK)


def _kmeans_pp_init(key, x_NxD, k):
  """k-means++: each new centre drawn with probability proportional to D(x)^2."""
  n = x_NxD.shape[0]
  first = jax.random.randint(jax.random.fold_in(key, 0), (), 0, n)
  cents = jnp.zeros((k, x_NxD.shape[1]), x_NxD.dtype).at[0].set(x_NxD[first])
  d2 = jnp.sum(jnp.square(x_NxD - x_NxD[first]), axis=-1)

  def body(i, carry):
    cents, d2 = carry
    total = jnp.sum(d2)
    # All points already chosen (N <= i): fall back to a uniform draw.
    logits = jnp.where(total > 0, jnp.log(jnp.maximum(d2, 1e-30)), 0.0)
    idx = jax.random.categorical(jax.random.fold_in(key, i), logits)
    cents = cents.at[i].set(x_NxD[idx])
    d2 = jnp.minimum(d2, jnp.sum(jnp.square(x_NxD - x_NxD[idx]), axis=-1))
    return cents, d2

  cents, _ = jax.lax.fori_loop(1, k, body, (cents, d2))
  return cents


@functools.partial(jax.jit, static_argnames=("k", "iters", "init"))
def kmeans(key, x_NxD, k: int, iters: int = 25, init: str = "kmeans++"):
  """Lloyd's k-means. Returns (centroids [K, D], assignment [N], inertia).

  An empty cluster keeps its previous centre (re-seeding handles dead codes later).
  `init='constrained'`: size-constrained k-means (`constrained_kmeans`)."""
  if init == "constrained":
    return constrained_kmeans(key, x_NxD, k, iters)
  if init == "kmeans++":
    cents = _kmeans_pp_init(key, x_NxD, k)
  elif init == "random":
    n = x_NxD.shape[0]
    idx = jax.random.choice(key, n, (k,), replace=n < k)
    cents = x_NxD[idx]
  else:
    raise ValueError(f"init must be 'kmeans++', 'random' or 'constrained', got {init!r}")

  def step(cents, _):
    assign, _ = nearest(x_NxD, cents)
    sums = jax.ops.segment_sum(x_NxD, assign, num_segments=k)
    counts = jax.ops.segment_sum(jnp.ones(x_NxD.shape[0], x_NxD.dtype), assign, num_segments=k)
    new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], cents)
    return new, None

  cents, _ = jax.lax.scan(step, cents, None, length=iters)
  assign, dist = nearest(x_NxD, cents)
  return cents, assign, jnp.sum(dist)


def inertia(x_NxD, cents_KxD):
  return jnp.sum(jnp.min(squared_distances(x_NxD, cents_KxD), axis=-1))


@jax.jit
def reseed_dead_codes(key, codebook_KxD, residuals_NxD, counts_K):
  """Re-initialises codes with zero usage to randomly drawn current residuals (plus a
  little noise so two revived codes never coincide). Returns (codebook, n_revived)."""
  dead = counts_K == 0
  n = residuals_NxD.shape[0]
  k1, k2 = jax.random.split(key)
  pick = jax.random.randint(k1, (codebook_KxD.shape[0],), 0, n)
  scale = jnp.std(residuals_NxD) * 0.01 + 1e-6
  fresh = residuals_NxD[pick] + scale * jax.random.normal(k2, codebook_KxD.shape)
  return jnp.where(dead[:, None], fresh, codebook_KxD), jnp.sum(dead)


@functools.partial(jax.jit, static_argnames=("groups", "iters", "sinkhorn_iters"))
def balanced_kmeans(key, x_NxD, groups: int, iters: int = 10, eps: float = 0.003,
                    sinkhorn_iters: int = 200):
  """k-means whose assignment step is a balanced (Sinkhorn) transport, each point then taking
  its plan's largest entry: groups near N / groups points, with no hard bounds. Runs on
  device; replaces LETTER's CPU constrained k-means (`k_means_constrained`, sizes bounded
  in [10, 60] for 256 codes in 10 groups).

  With eps 0.003 (LETTER's Sinkhorn epsilon) and 200 iterations, 256 points of which 200
  form one blob (scale 0.05) split into 10 groups of 12..30 points (eps 0.05: 8..156); a
  tighter blob (scale 0.01) gives 6..67, outside LETTER's bounds: the transport is
  balanced, its rounding to one group per point need not be.
  Returns the group of each point [N] (int32)."""
  cents = _kmeans_pp_init(key, x_NxD, groups)

  def assign(cents):
    plan = sinkhorn_log(squared_distances(x_NxD, cents), eps, sinkhorn_iters)
    return jnp.argmax(plan, axis=-1)

  def step(cents, _):
    a = assign(cents)
    sums = jax.ops.segment_sum(x_NxD, a, num_segments=groups)
    counts = jax.ops.segment_sum(jnp.ones(x_NxD.shape[0], x_NxD.dtype), a, num_segments=groups)
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], cents), None

  cents, _ = jax.lax.scan(step, cents, None, length=iters)
  return assign(cents).astype(jnp.int32)


def constrained_kmeans(key, x_NxD, k: int, iters: int = 10):
  """Size-constrained k-means, LETTER's codebook initialisation (RQ-VAE/models/vq.py:50-61:
  `KMeansConstrained(n_clusters=256, size_min=min(N // 512, 50), size_max=4 * size_min,
  max_iter=10, n_init=10)` on the level's residuals). Here on device: Lloyd iterations
  whose assignment step is a balanced Sinkhorn transport (`balanced_kmeans`), so every
  cluster holds about N / k points, inside LETTER's bounds (N / 2k .. 2N / k) whenever
  N >= 2k; one k-means++ start instead of 10 restarts. Returns (centroids [K, D] = the
  means of the final clusters, assignment [N], inertia of the points to their centroids)."""
  assign = balanced_kmeans(key, x_NxD, k, iters)
  sums = jax.ops.segment_sum(x_NxD, assign, num_segments=k)
  counts = jax.ops.segment_sum(jnp.ones(x_NxD.shape[0], x_NxD.dtype), assign, num_segments=k)
  fallback = x_NxD[jax.random.randint(key, (k,), 0, x_NxD.shape[0])]   # an empty cluster
  cents = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], fallback)
  return cents, assign, jnp.sum(jnp.square(x_NxD - cents[assign]))
