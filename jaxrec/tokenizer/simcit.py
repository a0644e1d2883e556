"""SimCIT's tokenizer (Li et al., arXiv 2506.16683, "A Simple Contrastive Framework of Item
Tokenization for Generative Recommendation"): a residual quantizer trained only
contrastively over several item views (the method, `methods/simcit.py`, puts TIGER's T5
over its IDs).

Following the official code (alibaba/SimCIT, generate_sid/models/ssid_rq.py):
  views      any item feature matrices (`tokenizer.simcit.views`), each L2-normalised on
             load (this library's choice, so that views of any scale weigh alike: the
             released code reads its view files as they are)
  encoders   one MLP per view, no bias, SiLU between layers (d -> 512 -> 384 -> 256 -> 128);
             every Linear initialised as PyTorch's nn.Linear (`init='torch'`, the released
             code's) or Flax's default (`'flax'`: lecun normal, zero bias; its kernels' std
             is sqrt(3) times PyTorch's, so the first encodings are several times larger)
  fusion     one shared attention: score_v = w . tanh(W h_v + b), softmax over views,
             fused = sum_v weight_v h_v
  quantizer  `rq.residual_quantize` in "gumbel" mode at every level: in training the soft
             codeword softmax((-||r - c||^2 + s * Gumbel) / 0.2) @ codebook (no straight-through;
             s = `gumbel_scale`: 1 in the official code, 0 in configs/simcit.py's variants,
             see there: unit noise swamps the small initial distances and nothing is learnt
             within short budgets; without noise the softmax at 0.2 is about uniform at
             those distances, bench/README.md, SimCIT: how soft its codes train),
             the next residual subtracts it (gradients flow: residual_grad="through"); the
             hard argmin at inference. Quantized vector = sum of the levels' codewords;
             distances on unnormalised codebooks, initialised by k-means on the fused
             vectors' residuals (`codebook_init='kmeans'`, the code's default) or uniform in
             [0, 1) as the released config (`'uniform'`; it collapses to a few codes within
             short budgets, see configs/simcit.py)
  loss       for every view (summed over views, as the official trainer sums its losses):
             one-directional InfoNCE, cosine / 0.07, the projected quantized vector as anchor
             and the projected view encoding of the same item as positive, both through one
             shared Linear(128, 128); denominator GRACE-style over the batch:
             sum_j e(q_i.q_j) + sum_j e(q_i.v_j) - e(q_i.q_i). Plus `w_div` (1.0) times the
             codebook Gram penalty: the signed mean of each level's Gram matrix of
             L2-normalised codewords (diagonal included, as the code), averaged over levels.
             No reconstruction (`w_recon` > 0 adds one back as a control: per-view MLP
             decoders from the quantized vector, `recon_loss`). The code computes a
             commitment loss with weight 0: `w_commit` (default 0) adds it.
  optimiser  AdamW lr 2e-4, weight decay 1e-3; the released schedule (warm-up 100 of 15,000
             epochs from 1e-6, then cosine to 1e-6) expressed in steps: warm-up =
             `warmup_frac` (100 / 15,000) of all steps.
  negatives  `groups` > 0: the batch split into that many parts, each its own negatives
             (the released run: 2 processes x 256 items, each process's InfoNCE over its
             own 256: `tokenizer.batch_size=512, groups=2`); else 'global': the whole batch
             (on a mesh, every device's items); 'local': each
             device's share only, as the official code (one GPU's batch).
Where the paper differs: the paper's Eq. writes a symmetric InfoNCE between the quantized
vector and each view; the code's one-directional GRACE form is followed. The official code
logs the unique-ID ratio and does not resolve collisions; here `tokenizer.collision`
resolves them as for the other tokenizers (appended level or Sinkhorn re-assignment).

Shape letters: B batch, D width (128), C levels, K codebook size, N items, V views.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.config import tokenizer_fingerprint_dict
from jaxrec.errors import ConfigError
from jaxrec.fingerprint import fingerprint
from jaxrec.optim import TrainState
from jaxrec.tokenizer import codes as codes_lib
from jaxrec.tokenizer.build import (assign_catalogue, fit_checkpoints, reuse, save_tokenizer,
                                   tokenizer_bytes)
from jaxrec.tokenizer.rq import residual_quantize
from jaxrec.tokenizer.train import KeepLowest, epoch_batches, fit_epochs, kmeans_codebooks
from jaxrec.xla import jit_init


@dataclasses.dataclass(frozen=True)
class SimCITConfig:
  view_dims: tuple
  hidden: tuple = (512, 384, 256)
  dim: int = 128
  levels: int = 3
  codebook_size: int = 256
  gumbel_tau: float = 0.2
  gumbel_scale: float = 1.0
  decoders: bool = False      # the reconstruction control's per-view decoders (w_recon > 0)
  torch_init: bool = False    # PyTorch nn.Linear's default init (the released code's)


def dense(features: int, fan_in: int, torch_init: bool, use_bias: bool = True) -> nn.Dense:
  """A Linear layer: Flax's default init (lecun normal kernel, zero bias), or PyTorch's
  nn.Linear default (kernel and bias uniform in +-1 / sqrt(fan_in)), as the released code
  builds every layer."""
  if not torch_init:
    return nn.Dense(features, use_bias=use_bias)
  bound = 1.0 / math.sqrt(fan_in)
  return nn.Dense(features, use_bias=use_bias,
                  kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                  bias_init=lambda k, shape, dtype=jnp.float32: jax.random.uniform(
                      k, shape, dtype, -bound, bound))


class MLP(nn.Module):
  widths: tuple
  torch_init: bool = False

  @nn.compact
  def __call__(self, x):
    for i, w in enumerate(self.widths):
      x = dense(w, x.shape[-1], self.torch_init, use_bias=False)(x)
      if i < len(self.widths) - 1:
        x = nn.silu(x)
    return x


class SimCIT(nn.Module):
  cfg: SimCITConfig

  def setup(self):
    cfg = self.cfg
    self.encoders = [MLP(tuple(cfg.hidden) + (cfg.dim,), cfg.torch_init, name=f"encoder{v}")
                     for v in range(len(cfg.view_dims))]
    self.score_hidden = dense(cfg.dim, cfg.dim, cfg.torch_init)
    self.score_out = dense(1, cfg.dim, cfg.torch_init, use_bias=False)
    self.codebooks = self.param("codebooks", nn.initializers.uniform(1.0),
                                (cfg.levels, cfg.codebook_size, cfg.dim))
    self.proj = dense(cfg.dim, cfg.dim, cfg.torch_init)
    if cfg.decoders:
      self.decoders = [MLP(tuple(reversed(cfg.hidden)) + (d,), cfg.torch_init, name=f"decoder{v}")
                       for v, d in enumerate(cfg.view_dims)]

  def encode(self, views):
    """(fused [B, D], per-view encodings [V, B, D], fusion weights [B, V])."""
    h = jnp.stack([enc(x) for enc, x in zip(self.encoders, views)])
    scores = self.score_out(jnp.tanh(self.score_hidden(h)))[..., 0]        # [V, B]
    weights = jax.nn.softmax(scores.T, axis=-1)                               # [B, V]
    return jnp.einsum("bv,vbd->bd", weights, h), h, weights

  def __call__(self, views, train: bool, key=None):
    """(RQOutput, projected quantized vectors [B, D], projected view encodings [V, B, D])."""
    fused, h, _ = self.encode(views)
    cfg = self.cfg
    rq = residual_quantize(fused, self.codebooks, modes=("gumbel",) * cfg.levels, train=train,
                           gumbel_tau=cfg.gumbel_tau, gumbel_scale=cfg.gumbel_scale,
                           residual_grad="through", key=key)
    return rq, self.proj(rq.quantized_BxD), self.proj(h)

  def project(self, x_BxD):
    return self.proj(x_BxD)

  def reconstruct(self, x_BxD):
    """Each view reconstructed from the quantized vector: [V] of [B, F_v]."""
    return [dec(x_BxD) for dec in self.decoders]

  def init_all(self, views):
    """Initialisation path that creates every parameter (the decoders too)."""
    rq, _, _ = self(views, False)
    return self.reconstruct(rq.quantized_BxD) if self.cfg.decoders else rq


def _normalize(x, axis=-1):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def grace_nce(q_BxD, v_BxD, temperature: float):
  """One-directional InfoNCE with the GRACE denominator (see the module docstring), mean
  over the batch."""
  qn, vn = _normalize(q_BxD), _normalize(v_BxD)
  s_qq = qn @ qn.T / temperature
  s_qv = qn @ vn.T / temperature
  eye = jnp.eye(q_BxD.shape[0], dtype=bool)
  logits = jnp.concatenate([jnp.where(eye, -jnp.inf, s_qq), s_qv], axis=1)
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.diagonal(s_qv))


def gram_penalty(codebooks_CxKxD):
  """Mean over levels of the mean of the Gram matrix of L2-normalised codewords."""
  n = _normalize(codebooks_CxKxD)
  return jnp.mean(jnp.einsum("ckd,cjd->ckj", n, n))


def recon_loss(x_hat_BxF, x_BxF):
  """Mean over the items of the squared L2 error of a (unit-norm) view."""
  return jnp.mean(jnp.sum(jnp.square(x_hat_BxF - x_BxF), axis=-1))


def loss_fn(params, views, key, *, model: SimCIT, temperature: float, w_div: float,
            w_commit: float, groups: int, prefix_loss: bool = False, w_recon: float = 0.0):
  """SimCIT's loss over a batch of items ([V] views of [B, F_v]). `groups` > 1 splits the
  batch into that many equal parts (one per device) for 'local' negatives. `prefix_loss`:
  each view's InfoNCE is the mean over the prefixes of the levels (the sum of the first
  1, 2, ..., C soft codewords, each projected, as anchor): the alternative left commented
  out in the official forward (ssid_rq.py:165-166, 172), which asks every prefix of an ID
  to tell the item apart, so that the first levels carry the coarse structure. `w_recon` > 0:
  the reconstruction control, plus w_recon times each view's squared error from the
  quantized vector through its decoder (`recon_loss`, summed over views)."""
  rq, q, p_VxBxD = model.apply(params, views, True, key)
  anchors = [q]
  if prefix_loss:          # prefix i = z - (the residual entering level i)
    z = rq.residuals_BxCxD[:, 0]
    anchors = [model.apply(params, z - rq.residuals_BxCxD[:, i], method=SimCIT.project)
               for i in range(1, rq.residuals_BxCxD.shape[1])] + [q]
  nce_fn = jax.vmap(functools.partial(grace_nce, temperature=temperature))
  metrics = {}
  nce = 0.0
  for v, p in enumerate(p_VxBxD):
    term = sum(jnp.mean(nce_fn(a.reshape(groups, -1, a.shape[-1]),
                               p.reshape(groups, -1, p.shape[-1]))) for a in anchors) / len(anchors)
    metrics[f"nce_view{v}"] = term
    nce = nce + term
  div = gram_penalty(params["params"]["codebooks"])
  loss = nce + w_div * div + w_commit * rq.commit_loss
  if w_recon:
    recon = sum(recon_loss(x_hat, x) for x_hat, x in
                zip(model.apply(params, rq.quantized_BxD, method=SimCIT.reconstruct), views))
    loss = loss + w_recon * recon
    metrics["recon"] = recon
  metrics.update(loss=loss, nce=nce, gram=div, commit=rq.commit_loss)
  return loss, metrics


@functools.partial(jax.jit, static_argnames=("model", "tx", "temperature", "w_div", "w_commit",
                                             "groups", "prefix_loss", "w_recon"), donate_argnums=0)
def train_epoch(state: TrainState, views, idx_SxB, key, *, model, tx, temperature, w_div,
                w_commit, groups, prefix_loss=False, w_recon=0.0):
  """One epoch: a scan of steps over the planned item batches; key = fold_in(key, step)."""
  def step(state, idx_B):
    k = jax.random.fold_in(key, state.step)
    batch = [x[idx_B] for x in views]
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, k, model=model, temperature=temperature, w_div=w_div,
        w_commit=w_commit, groups=groups, prefix_loss=prefix_loss, w_recon=w_recon)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state), metrics

  state, metrics = jax.lax.scan(step, state, idx_SxB)
  return state, jax.tree.map(jnp.mean, metrics)


@functools.partial(jax.jit, static_argnames=("model", "temperature", "groups"))
def heldout_nce(params, views, idx_SxB, *, model: SimCIT, temperature: float, groups: int):
  """The mean over views and batches of held-out items (rows of `idx_SxB`) of the InfoNCE
  between the items' hard IDs (inference: no Gumbel soft assignment) and each view, in-batch
  negatives as in training: the contrastive part of the released trainer's validation loss
  (batch_trainer.py eval, the model's losses on val.txt's items; the Gram term is added
  where the fit keeps its best epoch)."""
  nce_fn = jax.vmap(functools.partial(grace_nce, temperature=temperature))

  def batch(idx_B):
    _, q, p_VxBxD = model.apply(params, [x[idx_B] for x in views], False)
    return sum(jnp.mean(nce_fn(q.reshape(groups, -1, q.shape[-1]),
                               p.reshape(groups, -1, p.shape[-1]))) for p in p_VxBxD)
  return jnp.mean(jax.lax.map(batch, idx_SxB))


def split_heldout(n: int, frac: float, batch_size: int, seed: int, groups: int = 1):
  """(training items, held-out batches [S, B]): a seeded `frac` of the items held out of
  training (the released code's val.txt), in batches of at most `batch_size`, a multiple of
  `groups` (the rest of a partial batch left out, as a drop-last loader)."""
  n_held = int(round(frac * n))
  if n_held < groups:
    return np.arange(n), np.zeros((0, 0), np.int64)
  perm = np.random.default_rng([seed, 11]).permutation(n)
  held, b = perm[:n_held], min(batch_size, n_held) // groups * groups
  return np.sort(perm[n_held:]), held[:n_held // b * b].reshape(-1, b)


@functools.partial(jax.jit, static_argnames=("model",))
def encode_catalogue(params, views, *, model: SimCIT):
  """Hard codes of every item (inference), the residuals and the fusion weights."""
  rq, _, _ = model.apply(params, views, False)
  _, _, weights = model.apply(params, views, method=SimCIT.encode)
  return {"codes_NxC": rq.codes_BxC, "residuals_NxCxD": rq.residuals_BxCxD,
          "fusion_NxV": weights}


def negative_groups(s, n_devices: int) -> int:
  """How many parts of a batch each take their in-batch negatives among themselves:
  `tokenizer.simcit.groups` when > 0 (the released run: 2 processes of 256 items), else one
  per device for 'local' negatives, 1 for 'global'."""
  if s.get("groups", 0):
    return int(s.groups)
  return n_devices if s.negatives == "local" else 1


def load_views(cfg, dataset):
  views = list(cfg.tokenizer.simcit.views)
  if not views:
    raise ConfigError("tokenizer.simcit.views is empty: name at least one item feature")
  return [np.asarray(_normalize(jnp.asarray(dataset.features[v], jnp.float32))) for v in views]


def init_params(model: SimCIT, key, views):
  """Every parameter (the reconstruction control's decoders too), from two items' views."""
  if model.cfg.decoders:
    return jit_init(model, key, [v[:2] for v in views], method=SimCIT.init_all)
  return jit_init(model, key, [v[:2] for v in views], train=False)


def model_for(cfg, views) -> SimCIT:
  t = cfg.tokenizer
  return SimCIT(SimCITConfig(view_dims=tuple(int(v.shape[1]) for v in views),
                             hidden=tuple(t.simcit.hidden), dim=int(t.simcit.dim),
                             levels=int(t.levels), codebook_size=int(t.codebook_size),
                             gumbel_tau=float(t.simcit.gumbel_tau),
                             gumbel_scale=float(t.simcit.get("gumbel_scale", 1.0)),
                             decoders=float(t.simcit.get("w_recon", 0.0)) > 0,
                             torch_init=t.simcit.get("init", "flax") == "torch"))


def build_code_table(cfg, dataset, key, workdir=None, log=print, n_devices: int = 1):
  """Trains SimCIT's tokenizer (or reuses workdir's codes.npz of the same fingerprint) and
  codes the catalogue. Returns (CodeTable, (model, params))."""
  t, s = cfg.tokenizer, cfg.tokenizer.simcit
  views = load_views(cfg, dataset)
  model = model_for(cfg, views)
  fp = fingerprint("simcit", *views, tokenizer_fingerprint_dict(t), cfg.seed, jax.__version__,
                   negative_groups(s, n_devices))
  def load():
    data = tokenizer_bytes(workdir)
    if data is None:
      return None
    params = init_params(model, jax.random.key(0), views)
    return model, flax.serialization.from_bytes(params, data)

  saved = reuse(workdir, fp, load, log)
  if saved is not None and saved[1] is not None:
    return saved
  if s.get("init", "flax") not in ("flax", "torch"):
    raise ConfigError(f"tokenizer.simcit.init must be 'flax' or 'torch', got {s.init!r}")
  if s.negatives not in ("global", "local"):
    raise ConfigError(f"tokenizer.simcit.negatives must be 'global' or 'local', got {s.negatives!r}")
  groups = negative_groups(s, n_devices)
  n = dataset.n_items
  holdout = float(s.get("holdout", 0.0))
  if not 0.0 <= holdout < 0.5:
    raise ConfigError(f"tokenizer.simcit.holdout={holdout}: a fraction of the items in [0, 0.5)")
  train_items, held_SxB = split_heldout(n, holdout, int(t.batch_size), cfg.seed, groups)
  if holdout and (held_SxB.size == 0 or held_SxB.shape[1] < 2 * groups):
    raise ConfigError(f"tokenizer.simcit.holdout={holdout}: {n} items leave too few held-out "
                      f"items for in-batch negatives ({groups} group(s))")
  n_train = len(train_items)
  batch_size = min(int(t.batch_size), n_train) // groups * groups
  if batch_size < 2 * groups:
    raise ConfigError(f"tokenizer.batch_size={t.batch_size}: SimCIT's in-batch negatives need "
                      f"at least 2 items per group ({groups} group(s), {n_train} items)")
  k_init, k_km, k_train = jax.random.split(key, 3)
  views_dev = [jnp.asarray(v) for v in views]
  state, tx = _initial_state(cfg, model, views_dev, k_init, k_km, -(-n_train // batch_size))
  sizes = (t.codebook_size,) * t.levels
  common = dict(model=model, tx=tx, temperature=float(s.temperature), w_div=float(s.w_div),
                w_commit=float(s.w_commit), groups=groups, prefix_loss=bool(s.prefix_loss),
                w_recon=float(s.get("w_recon", 0.0)))
  # with a held-out split, the fit keeps the parameters of the logged epoch with the lowest
  # held-out loss (the released trainer's checkpoint_best.pt); without, the last epoch's
  train_dev = jnp.asarray(train_items, jnp.int32)
  keep = KeepLowest(bool(holdout))
  state = keep.wrap(state)

  def run_epoch(state, epoch):
    idx = epoch_batches(jax.random.fold_in(k_train, epoch), n_train, batch_size)
    if holdout:
      idx = train_dev[idx]
    tr, metrics = train_epoch(keep.train(state), views_dev, idx,
                              jax.random.fold_in(k_train, 1 << 20), **common)
    return keep.with_train(state, tr), metrics

  def describe(state, epoch, last):
    params = keep.train(state).params
    enc = encode_catalogue(params, views_dev, model=model)
    out = {"fusion_weights": [round(float(w), 4) for w in enc["fusion_NxV"].mean(0)],
           **codes_lib.health_dict(enc["codes_NxC"], sizes)}
    if holdout:
      nce = float(heldout_nce(params, views_dev, jnp.asarray(held_SxB), model=model,
                              temperature=float(s.temperature), groups=groups))
      # the released trainer's eval loss sums every loss term: the InfoNCE and the Gram term
      loss = nce + float(s.w_div) * float(gram_penalty(params["params"]["codebooks"]))
      out["heldout_nce"], out["heldout_loss"] = round(nce, 6), round(loss, 6)
      state, kept = keep.offer(state, loss)
      if kept:
        out["kept"] = True
    return state, out

  t0 = time.time()
  state, history = fit_epochs(state, t.epochs, run_epoch, describe,
                              fit_checkpoints(t, workdir, fp, log), log, what="SimCIT tokenizer",
                              due=lambda epoch: (epoch + 1) % t.log_every == 0)
  params = keep.params(state)
  enc = encode_catalogue(params, views_dev, model=model)
  last = model.cfg.levels - 1
  table = assign_catalogue(
      t, enc["codes_NxC"], enc["residuals_NxCxD"][:, last],
      params["params"]["codebooks"][last], fp,
      {"source": "simcit", "fit_seconds": round(time.time() - t0, 2),
       "history": history[-1] if history else {},
       "fusion_weights": [round(float(w), 4) for w in enc["fusion_NxV"].mean(0)]})
  save_tokenizer(workdir, params)
  return table, (model, params)


def _initial_state(cfg, model: SimCIT, views, k_init, k_km, steps_per_epoch: int):
  """Parameters (codebooks by k-means on the fused vectors' residuals, or uniform) and
  AdamW with the released schedule: (TrainState, tx)."""
  t, s = cfg.tokenizer, cfg.tokenizer.simcit
  params = flax.core.unfreeze(init_params(model, k_init, views))
  if s.codebook_init == "kmeans":     # on the fused vectors' residuals, as the RQ-VAE's
    fused, _, _ = model.apply(params, views, method=SimCIT.encode)
    params["params"]["codebooks"] = kmeans_codebooks(k_km, fused, model.cfg.levels,
                                                     model.cfg.codebook_size, t.kmeans_iters,
                                                     "kmeans++")
  elif s.codebook_init != "uniform":
    raise ConfigError(f"tokenizer.simcit.codebook_init must be 'uniform' or 'kmeans', got "
                      f"{s.codebook_init!r}")
  total = t.epochs * steps_per_epoch
  warmup = max(1, int(s.warmup_frac * total))
  sched = optax.warmup_cosine_decay_schedule(1e-6, t.lr, warmup, max(total, warmup + 1),
                                             end_value=1e-6)
  tx = optax.adamw(sched, weight_decay=t.weight_decay)
  return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params)), tx
