"""RQ-KMeans: residual k-means on an item feature, with no autoencoder (GRID's and
MiniOneRec's default tokenizer; `tokenizer.source="rqkmeans"`). Level l's codebook is
k-means (tokenizer.kmeans_method, tokenizer.kmeans_iters) on what levels 0..l-1 left of the
features; an item's code at each level is its residual's nearest centroid. Collisions are
resolved as for the other tokenizers (tokenizer.collision: the appended level, or the
Sinkhorn re-assignment of the last level from its residuals).

Shape letters: N items, F feature width, C levels, K codebook size.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxrec.tokenizer.rq import residual_quantize
from jaxrec.tokenizer.train import kmeans_codebooks


@functools.partial(jax.jit, static_argnames=("levels",))
def encode(codebooks_CxKxF, feats_NxF, levels: int):
  """Hard codes [N, C] and the residual entering each level [N, C, F]."""
  rq = residual_quantize(feats_NxF, codebooks_CxKxF, modes=("hard",) * levels, train=False)
  return rq.codes_BxC, rq.residuals_BxCxD


def fit(tok_cfg, feats_NxF, key):
  """(codebooks [C, K, F], codes [N, C], residuals [N, C, F]) of the catalogue."""
  feats = jnp.asarray(feats_NxF, jnp.float32)
  books = kmeans_codebooks(key, feats, tok_cfg.levels, tok_cfg.codebook_size,
                           tok_cfg.kmeans_iters, tok_cfg.kmeans_method)
  codes, residuals = encode(books, feats, tok_cfg.levels)
  return books, codes, residuals
