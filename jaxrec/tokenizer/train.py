"""Tokenizer training: k-means init, a jitted pure step over item batches, and the epoch
loop every tokenizer fit shares (`fit_epochs`: the RQ-VAE's, LETTER's and SimCIT's).

Shape letters: N items, F feature width, B batch, C levels, K codebook size, D code width,
S steps per epoch.

Methods add terms to the tokenizer loss through an `Extra`: `fn(params, model, out, batch,
key) -> (loss, metrics)` is static (hashable, e.g. a frozen dataclass) and `data` a pytree of
arrays every step receives (e.g. LETTER's collaborative embeddings). `batch` holds the item
ids `idx_B`, features `x_BxF`, `data`, and `epoch`: what `fn.epoch_aux(params, model, data,
key)` returned at the start of the epoch (None if `fn` has no `epoch_aux`; LETTER re-clusters
its codebooks there). `out` is the model's (reconstruction, RQOutput, z).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.checkpoint import Checkpoints
from jaxrec.optim import TrainState, make_optimizer
from jaxrec.tokenizer import codes as codes_lib
from jaxrec.tokenizer import kmeans as kmeans_lib
from jaxrec.tokenizer.kmeans import kmeans, reseed_dead_codes
from jaxrec.tokenizer.rqvae import RQVAE, RQVAEConfig, reconstruction_loss
from jaxrec.xla import jit_init


@dataclasses.dataclass(frozen=True)
class Extra:
  """A method's extra tokenizer terms: static `fn` and the arrays `data` it reads."""
  fn: Callable
  data: Any = None


def tokenizer_loss(params, model: RQVAE, batch, key, extra_loss: Optional[Callable] = None):
  """L_recon + L_rq (+ the method's extra terms). Returns (loss, metrics)."""
  k_drop, k_quant, k_extra = jax.random.split(key, 3)
  out = model.apply(params, batch["x_BxF"], True, k_quant, rngs={"dropout": k_drop})
  x_hat, rq, _ = out
  recon = reconstruction_loss(x_hat, batch["x_BxF"])
  loss = recon + rq.loss
  metrics = {"recon": recon, "rq": rq.loss}
  if extra_loss is not None:
    extra, extra_metrics = extra_loss(params, model, out, batch, k_extra)
    loss = loss + extra
    metrics.update(extra_metrics)
  metrics["loss"] = loss
  return loss, metrics


@functools.partial(jax.jit, static_argnames=("model", "tx", "extra_loss"), donate_argnums=0)
def train_epoch(state: TrainState, feats_NxF, idx_SxB, key, extra_data=None, tail_R=None, *,
                model, tx, extra_loss=None):
  """One epoch: a scan of tokenizer steps over the planned item batches, then one step on
  the shorter last batch `tail_R` when given (`tokenizer.last_batch='short'`); the metrics
  are the mean over the epoch's steps."""
  epoch_aux = None
  if extra_loss is not None and hasattr(extra_loss, "epoch_aux"):
    k_epoch = jax.random.fold_in(jax.random.fold_in(key, 0x7FFFFFFF), state.step)
    epoch_aux = extra_loss.epoch_aux(jax.lax.stop_gradient(state.params), model, extra_data,
                                     k_epoch)

  def step(state, idx_B):
    batch = {"x_BxF": feats_NxF[idx_B], "idx_B": idx_B, "data": extra_data, "epoch": epoch_aux}
    k = jax.random.fold_in(key, state.step)
    (_, metrics), grads = jax.value_and_grad(tokenizer_loss, has_aux=True)(
        state.params, model, batch, k, extra_loss)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return TrainState(state.step + 1, params, opt_state), metrics

  state, metrics = jax.lax.scan(step, state, idx_SxB)
  if tail_R is None:
    return state, jax.tree.map(jnp.mean, metrics)
  state, last = step(state, tail_R)
  steps = idx_SxB.shape[0] + 1
  return state, jax.tree.map(lambda m, t: (jnp.sum(m) + t) / steps, metrics, last)


@functools.partial(jax.jit, static_argnames=("model",))
def encode_catalogue(params, feats_NxF, *, model: RQVAE):
  """Nearest-code assignment of every item (inference mode), with residuals and recon; in
  chunks of kmeans.CHUNK items, so that the encoder's activations of a 10M-item catalogue
  are never held at once."""
  def one(x_F):
    x_hat, rq, z = model.apply(params, x_F[None], False)
    return (rq.codes_BxC[0], rq.residuals_BxCxD[0], z[0],
            jnp.mean(jnp.square(x_hat[0] - x_F)))
  codes, residuals, z, err = jax.lax.map(one, feats_NxF, batch_size=kmeans_lib.CHUNK)
  return {"codes_NxC": codes, "residuals_NxCxD": residuals, "z_NxD": z, "recon": jnp.mean(err)}


def kmeans_init(params, feats_NxF, key, model: RQVAE, iters: int, init: str):
  """Initialises each level's codebook with k-means on that level's residuals of the items
  given (the whole catalogue, or `tokenizer.kmeans_sample='first_batch'`: the fit's first
  batch), level by level, each on what the previous levels left."""
  cfg = model.cfg
  z = jax.lax.map(lambda x_F: model.apply(params, x_F[None], method=RQVAE.encode)[0], feats_NxF,
                  batch_size=kmeans_lib.CHUNK)
  params = flax.core.unfreeze(params)
  params["params"]["codebooks"] = kmeans_codebooks(key, z, cfg.levels, cfg.codebook_size,
                                                   iters, init)
  return params


def kmeans_codebooks(key, z_NxD, levels: int, size: int, iters: int, init: str):
  """Codebooks [C, K, D] by k-means level by level, each on what the previous levels left:
  the residual to each point's nearest centroid, as the quantizer will leave it (LETTER's
  and ETEGRec's code quantize the batch after initialising a level, models/vq.py). For
  k-means++ and random starts that is the k-means assignment; for `constrained` (balanced
  clusters) a point's cluster may not be its nearest centroid."""
  books, residual = [], z_NxD
  for level in range(levels):
    cents, _, _ = kmeans(jax.random.fold_in(key, level), residual, size, iters, init)
    books.append(cents)
    residual = residual - cents[kmeans_lib.nearest(residual, cents)[0]]
  return jnp.stack(books)


def fit_streams(key):
  """(epoch permutations' key, per-step noise key): two independent streams, so that epoch
  n's permutation and step n's dropout and assignment noise never draw the same bits."""
  k_perm, k_step = jax.random.split(key)
  return k_perm, k_step


def epoch_batches(key, n_items: int, batch_size: int):
  """A permutation of the items as [S, B] batches; the last batch wraps around to the
  permutation's start so every step has the same shape and every item is seen."""
  steps = -(-n_items // batch_size)
  perm = jax.random.permutation(key, n_items)
  total = steps * batch_size
  return jnp.concatenate([perm, perm[:total - n_items]]).reshape(steps, batch_size)


def epoch_plan(key, n_items: int, batch_size: int, last_batch: str = "wrap"):
  """(full batches [S, B], the shorter last batch [R] or None): `last_batch='wrap'` fills the
  last batch from the permutation's start (`epoch_batches`: one compiled shape);
  `'short'` keeps it short, as a PyTorch DataLoader without drop_last does (LETTER's and
  ETEGRec's tokenizer fits: 3,541 items in batches of 1,024 are 3 x 1,024 + 469, not 4 x
  1,024 with 555 items seen twice)."""
  if last_batch == "wrap" or n_items % batch_size == 0:
    return epoch_batches(key, n_items, batch_size), None
  perm = jax.random.permutation(key, n_items)
  full = n_items // batch_size * batch_size
  return perm[:full].reshape(-1, batch_size), perm[full:]


class FitCheckpoints:
  """A tokenizer fit that survives a kill: every `every` epochs (0: never) the train state,
  the epochs done and the health history go to `directory` (orbax, checksummed, the two
  newest kept); a rerun with the same fingerprint (the directory's name carries it) resumes
  after the newest intact one, bit for bit. Removed once the code table is saved."""

  def __init__(self, directory: Optional[str], every: int, log: Callable[[str], None] = print):
    self.directory, self.every, self.log = directory, int(every or 0), log
    self._ckpt = None
    if directory and self.every:
      self._ckpt = Checkpoints(directory, max_to_keep=2, local=True)
      for name in self._ckpt.partial:
        log(f"{directory}/{name}: a tokenizer save interrupted by the last run was removed")

  def restore(self, state):
    """(state, epochs done, history): the newest intact checkpoint's, or (state, 0, [])."""
    if self._ckpt is None or not self._ckpt.steps():
      return state, 0, []
    restored = self._ckpt.restore(state)
    if restored is None:
      self.log(f"{self.directory}: no intact tokenizer checkpoint; the fit starts over")
      return state, 0, []
    epoch, state, meta = restored
    self.log(f"tokenizer fit resumed from {self.directory}/{epoch} (epoch {epoch})")
    return state, epoch, list(meta["history"])

  def save(self, epochs_done: int, state, history, loss, last: bool) -> None:
    if self._ckpt is None or last or epochs_done % self.every:
      return
    check_finite_loss(epochs_done - 1, loss)           # never save a diverged fit
    self._ckpt.save(epochs_done, state, {"history": history})

  def close(self) -> None:
    """Waits for the last save; the folder stays until codes.npz is written
    (`build.remove_fit_checkpoints`)."""
    if self._ckpt is not None:
      self._ckpt.close()


@dataclasses.dataclass(frozen=True)
class KeepLowest:
  """A fit that keeps, beside its train state, the parameters of the logged epoch with the
  lowest score (copied: the train state is donated to each epoch), and returns those; off,
  the state is the train state and the last epoch's parameters are returned."""
  on: bool

  def wrap(self, state):
    if not self.on:
      return state
    return {"train": state, "kept": jax.tree.map(jnp.copy, state.params),
            "score": jnp.asarray(jnp.inf)}

  def train(self, state):
    return state["train"] if self.on else state

  def with_train(self, state, train):
    return {**state, "train": train} if self.on else train

  def offer(self, state, score: float):
    """(state, whether the current parameters were kept: `score` below every earlier one)."""
    if not self.on or score >= float(state["score"]):
      return state, False
    return {**state, "kept": jax.tree.map(jnp.copy, state["train"].params),
            "score": jnp.asarray(score)}, True

  def params(self, state):
    return state["kept"] if self.on else state.params


def fit_epochs(state, epochs: int, run_epoch: Callable, describe: Callable,
               checkpoints: Optional[FitCheckpoints], log: Callable[[dict], None],
               what: str = "tokenizer", due: Optional[Callable[[int], bool]] = None):
  """The epoch loop of a tokenizer fit, resuming from `checkpoints` when they hold a partial
  fit: `run_epoch(state, epoch) -> (state, metrics)` (jitted, a `loss` among the metrics);
  after the epochs `due(epoch)` names (every `log_every`-th, by the caller) and the last,
  `describe(state, epoch, last) -> (state, dict)` adds the catalogue's health to the epoch's
  record (and may change the state: the RQ-VAE re-seeds dead codes there). Each epoch's
  loss is checked once the next is queued. Returns (state, history of records)."""
  checkpoints = checkpoints or FitCheckpoints(None, 0)
  state, start, history = checkpoints.restore(state)
  t0, pending = time.time(), None
  for epoch in range(start, epochs):
    state, metrics = run_epoch(state, epoch)
    if pending is not None:       # the previous epoch's loss, fetched once this one is queued
      check_finite_loss(*pending, what=what)
    pending = (epoch, metrics["loss"])
    last = epoch == epochs - 1
    if last or (due is not None and due(epoch)):
      record = {"epoch": epoch + 1, "time_s": round(time.time() - t0, 2),
                **{k: round(float(v), 6) for k, v in jax.device_get(metrics).items()}}
      state, health = describe(state, epoch, last)
      record.update(health)
      history.append(record)
      log(record)
    checkpoints.save(epoch + 1, state, history, metrics["loss"], last)
  checkpoints.close()
  if pending is not None:
    check_finite_loss(*pending, what=what)
  return state, history


def fit(tok_cfg, arch: RQVAEConfig, feats_NxF: np.ndarray, key, extra: Optional[Extra] = None,
        log: Callable[[dict], None] = None, checkpoints: Optional[FitCheckpoints] = None):
  """Trains the RQ-VAE (with a method's extra terms) for `tok_cfg.epochs`, resuming from
  `checkpoints` when they hold a partial fit; returns (model, params, history)."""
  log = log or (lambda m: logging.info("tokenizer %s", m))
  model = RQVAE(arch)
  feats = jnp.asarray(feats_NxF, jnp.float32)
  n = feats.shape[0]
  batch_size = min(tok_cfg.batch_size, n)
  k_init, k_km, k_train, k_seed = jax.random.split(key, 4)
  k_perm, k_step = fit_streams(k_train)
  last_batch = tok_cfg.get("last_batch", "wrap")
  params = jit_init(model, {"params": k_init}, feats[:2], train=False)
  if tok_cfg.kmeans_init:
    init_feats = feats
    if tok_cfg.get("kmeans_sample", "catalogue") == "first_batch":
      # ETEGRec's pre-training initialises each level on the first training batch's
      # residuals (RQVAE/models/vq.py:69-70, in that batch's forward pass): here the items
      # of this fit's first batch (epoch 0's permutation)
      init_feats = feats[epoch_plan(jax.random.fold_in(k_perm, 0), n, batch_size,
                                    last_batch)[0][0]]
    params = kmeans_init(params, init_feats, k_km, model, tok_cfg.kmeans_iters,
                         tok_cfg.kmeans_method)
  steps = -(-n // batch_size)
  tx = make_optimizer(tok_cfg.lr, tok_cfg.weight_decay, tok_cfg.epochs * steps,
                      tok_cfg.warmup_epochs * steps, tok_cfg.clip, tok_cfg.schedule)
  state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  extra_fn = extra.fn if extra is not None else None
  extra_data = jax.device_put(extra.data) if extra is not None else None
  sizes = (arch.codebook_size,) * arch.levels
  every = tok_cfg.reseed_every
  # tokenizer.keep='lowest_collision' (ETEGRec's pre-training, RQVAE/trainer.py: it returns
  # best_collision_model.pth): the fit keeps the parameters of the logged epoch with the
  # fewest colliding IDs (1 - distinct IDs / items, the official rate)
  keep = KeepLowest(tok_cfg.get("keep", "last") == "lowest_collision")
  state = keep.wrap(state)

  def run_epoch(state, epoch):
    idx, tail = epoch_plan(jax.random.fold_in(k_perm, epoch), n, batch_size, last_batch)
    train, metrics = train_epoch(keep.train(state), feats, idx, k_step, extra_data, tail,
                                 model=model, tx=tx, extra_loss=extra_fn)
    return keep.with_train(state, train), metrics

  def reseed_due(epoch):
    return bool(every) and (epoch + 1) % every == 0 and epoch != tok_cfg.epochs - 1

  def describe(state, epoch, last):
    enc = encode_catalogue(keep.train(state).params, feats, model=model)
    health = {"catalogue_recon": round(float(enc["recon"]), 6),
              **codes_lib.health_dict(enc["codes_NxC"], sizes)}
    state, kept = keep.offer(state, 1.0 - health["distinct_ids"] / n)
    if kept:
      health["kept"] = True
    train = keep.train(state)
    if reseed_due(epoch):
      train, health["revived"] = _reseed(train, enc, jax.random.fold_in(k_seed, epoch), sizes)
    return keep.with_train(state, train), health

  state, history = fit_epochs(
      state, tok_cfg.epochs, run_epoch, describe, checkpoints, log,
      due=lambda epoch: reseed_due(epoch) or (epoch + 1) % tok_cfg.log_every == 0)
  return model, keep.params(state), history


def check_finite_loss(epoch: int, loss, what: str = "tokenizer") -> None:
  """Stops a tokenizer fit on a NaN / Inf epoch loss, before anything is written."""
  loss = float(loss)
  if not np.isfinite(loss):
    raise FloatingPointError(
        f"{what} loss is {loss} at epoch {epoch + 1} (stage tokenizer): lower tokenizer.lr "
        "or check the item features' scale; no code table was written")


def _reseed(state: TrainState, enc, key, sizes):
  """Re-initialises each level's codes unused over the catalogue from current residuals."""
  params = flax.core.unfreeze(state.params)
  books = params["params"]["codebooks"]
  revived = []
  for level, k in enumerate(sizes):
    counts = jnp.zeros(k, jnp.int32).at[enc["codes_NxC"][:, level]].add(1)
    book, n = reseed_dead_codes(jax.random.fold_in(key, level), books[level],
                                enc["residuals_NxCxD"][:, level], counts)
    books = books.at[level].set(book)
    revived.append(int(n))
  params["params"]["codebooks"] = books
  return state.replace(params=params), revived
