"""LETTER (Wang et al., CIKM 2024): a collaborative and diversity regularized RQ-VAE
tokenizer with Sinkhorn assignment on the last level, and a ranking-guided generation loss.

Tokenizer loss: L_recon + L_rq + alpha * L_cf + beta * L_div, on the shared RQ-VAE:
  L_cf   in-batch InfoNCE from each item's quantized latent (the straight-through output,
         so the gradient reaches the encoder and not the codebooks) to its frozen
         collaborative embedding: dot-product logits / cf_temperature (official: 1), the
         other items of the batch as negatives, one direction (quantized -> CF).
  L_div  per level: each level's codebook is split into `n_clusters` balanced groups at
         the start of every epoch; an item's chosen code is pulled towards a random other
         code of its group against every other code of the level (softmax over dot
         products of code vectors, own code masked). Gradients reach the codebooks only.
The Sinkhorn last level (tokenizer.modes), the Sinkhorn collision re-assignment
(tokenizer.collision='sinkhorn') and the ranking-guided loss (cross-entropy on logits /
train.tau) are shared core, switched on by configs/letter.py.

Where the official code and the paper differ, this follows the official code:
  - L_div is reduced over levels like the quantization loss (official: it sits inside
    each level's loss, which are averaged; `tokenizer.level_reduce='sum'` gives the sum
    of the paper's equations for both);
  - 10 clusters per level (official `n_clusters`, `tokenizer.letter.n_clusters`; the paper
    writes K), re-clustered every epoch by balanced k-means on device (official: CPU
    constrained k-means with group sizes in [10, 60]);
  - L_cf on dot products with temperature 1.
A code whose group has no other member (possible only for tiny codebooks) adds no L_div
term (the official code would loop forever there).

Shape letters: B batch, C levels, K codes per level, D code width, G groups.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jaxrec.config import ConfigError
from jaxrec.methods.base import Method, register
from jaxrec.tokenizer.kmeans import balanced_kmeans
from jaxrec.tokenizer.rq import masked_mean
from jaxrec.tokenizer.train import Extra


def cf_loss(quantized_BxD, cf_BxD, temperature: float = 1.0):
  """In-batch InfoNCE, quantized -> collaborative: row b's positive is column b."""
  logits = quantized_BxD @ cf_BxD.T / temperature
  labels = jnp.arange(quantized_BxD.shape[0])
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def membership(groups_K, n_groups: int):
  """Padded membership table of a grouping of K codes: (members [G, K] with -1 padding,
  group sizes [G], each code's position inside its group [K])."""
  k = groups_K.shape[0]
  order = jnp.argsort(groups_K, stable=True)
  sizes = jnp.bincount(groups_K, length=n_groups)
  starts = jnp.cumsum(sizes) - sizes
  rank = jnp.zeros(k, jnp.int32).at[order].set(jnp.arange(k, dtype=jnp.int32))
  pos = rank - starts[groups_K]
  members = jnp.full((n_groups, k), -1, jnp.int32).at[groups_K, pos].set(
      jnp.arange(k, dtype=jnp.int32))
  return members, sizes.astype(jnp.int32), pos


def draw_positives(key, codes_B, groups_K, members_GxK, sizes_G, pos_K):
  """For each chosen code, a uniformly drawn *other* code of its group.
  Returns (positive codes [B], valid [B]: False where the group has no other member)."""
  g = groups_K[codes_B]
  n = sizes_G[g]
  r = jax.random.randint(key, codes_B.shape, 0, jnp.maximum(n - 1, 1))
  j = jnp.where(r < pos_K[codes_B], r, r + 1)          # skip the code's own slot
  pos = members_GxK[g, jnp.minimum(j, members_GxK.shape[1] - 1)]
  valid = n >= 2
  return jnp.where(valid, pos, codes_B), valid


def diversity_loss(codebook_KxD, codes_B, positives_B, valid_B, temperature: float = 1.0):
  """Cross-entropy of the positive code among all codes but the item's own, on dot
  products of the chosen code vector with every code vector; mean over valid items."""
  k = codebook_KxD.shape[0]
  logits = codebook_KxD[codes_B] @ codebook_KxD.T / temperature
  logits = jnp.where(jax.nn.one_hot(codes_B, k, dtype=bool), -1e9, logits)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, positives_B)
  return masked_mean(ce, valid_B)


@dataclasses.dataclass(frozen=True)
class LetterTerms:
  """alpha * L_cf + beta * L_div as a static tokenizer extra (see tokenizer/train.py)."""
  alpha: float
  beta: float
  n_clusters: int = 10
  cluster_iters: int = 10
  cf_temperature: float = 1.0
  div_temperature: float = 1.0
  level_reduce: str = "mean"

  def epoch_aux(self, params, model, data, key):
    """Balanced groups of every level's codes, with their membership tables."""
    del model, data
    if self.beta == 0:
      return None
    books = params["params"]["codebooks"]
    out = []
    for level in range(books.shape[0]):
      groups = balanced_kmeans(jax.random.fold_in(key, level), books[level], self.n_clusters,
                               self.cluster_iters)
      out.append((groups, *membership(groups, self.n_clusters)))
    return tuple(out)

  def __call__(self, params, model, out, batch, key):
    del model
    _, rq, _ = out
    loss, metrics = 0.0, {}
    if self.alpha:
      cf = cf_loss(rq.quantized_BxD, batch["data"]["cf_NxD"][batch["idx_B"]],
                   self.cf_temperature)
      loss = loss + self.alpha * cf
      metrics["cf"] = cf
    if self.beta:
      books = params["params"]["codebooks"]
      terms = []
      for level, (groups, members, sizes, pos) in enumerate(batch["epoch"]):
        codes = rq.codes_BxC[:, level]
        positives, valid = draw_positives(jax.random.fold_in(key, level), codes, groups,
                                          members, sizes, pos)
        terms.append(diversity_loss(books[level], codes, positives, valid,
                                    self.div_temperature))
      reduce = jnp.mean if self.level_reduce == "mean" else jnp.sum
      div = reduce(jnp.stack(terms))
      loss = loss + self.beta * div
      metrics["div"] = div
    return loss, metrics


def required_features(cfg):
  """L_cf reads the collaborative embedding (derived by SASRec when it is 'cf' and missing)."""
  lc = cfg.tokenizer.letter
  return (lc.cf_feature,) if cfg.tokenizer.source == "rqvae" and lc.alpha else ()


def tokenizer_loss(cfg, dataset):
  """LETTER's L_cf and L_div, reading the collaborative embedding `tokenizer.letter.cf_feature`
  of the data set (Instruments: LETTER's own 32-d SASRec embedding; synthetic: the planted
  `cf` feature)."""
  tok = cfg.tokenizer
  lc = tok.letter
  if tok.source != "rqvae" or not (lc.alpha or lc.beta):
    return None
  data = None
  if lc.alpha:
    if lc.cf_feature not in dataset.features:
      raise ConfigError(f"tokenizer.letter.cf_feature={lc.cf_feature!r} but the data set has "
                       f"features {sorted(dataset.features)} (add it to data.features)")
    cf = dataset.features[lc.cf_feature]
    if cf.shape[1] != tok.code_dim:
      raise ConfigError(f"LETTER's L_cf compares the {tok.code_dim}-d quantized latent with the "
                       f"collaborative embedding {lc.cf_feature!r}, which is {cf.shape[1]}-d: set "
                       f"tokenizer.code_dim={cf.shape[1]} or use a {tok.code_dim}-d embedding")
    data = {"cf_NxD": jnp.asarray(cf, jnp.float32)}
  terms = LetterTerms(alpha=float(lc.alpha), beta=float(lc.beta), n_clusters=int(lc.n_clusters),
                      cluster_iters=int(lc.cluster_iters),
                      cf_temperature=float(lc.cf_temperature),
                      div_temperature=float(lc.div_temperature), level_reduce=tok.level_reduce)
  return Extra(terms, data)


class Letter(Method):
  name = "letter"
  heads = ("level", "vocab")

  def required_features(self, cfg):
    return required_features(cfg)

  def tokenizer_loss(self, cfg, dataset):
    return tokenizer_loss(cfg, dataset)


METHOD = register(Letter())
