"""ETEGRec (Liu et al., SIGIR 2025): the item tokenizer and the recommender trained end to
end by alternating optimization, tied together by two alignment losses.

One state holds both models (`EteState`: the T5 with its two adapters, the RQ-VAE, each
with its AdamW state). Two jitted steps update disjoint parts of it:
  tokenizer step     L_recon + L_rq + w_sia * SIA + w_psa * PSA   -> tokenizer only
  recommender step   L_code + w_sia * SIA + w_psa * PSA            -> recommender only
The schedule (a `Plan` of two `Stage`s for the shared training loop, not a second loop):
  alternation  epoch e is a tokenizer epoch when e % cycle == 0, else a recommender epoch;
               both read the same sequence batches. w_sia = w_psa = 0 for the first
               `warm_epochs`. After every tokenizer epoch all items are re-coded and the
               decoding tables rebuilt, on device (`recode`). Ablations of the alternation
               (`etegrec.alternation`): 'joint' updates both models in every step on the sum
               of all the losses (the paper's motivation for alternating: end-to-end training
               of both at once is unstable), 'frozen' never trains the pre-trained tokenizer
               (the two-stage pipeline with the alignment losses on the recommender).
  finetune     from the best checkpoint of the alternation: tokenizer frozen, codes
               recomputed, the recommender trained on L_code alone (lr 5e-4, cosine, its own
               early stopping). Test metrics are those of this stage's best checkpoint.

SIA (sequence-item alignment): the encoder's final states, mean-pooled over the history,
through a linear adapter to the code width; that vector and the target item's tokenizer
latent each give per-level distributions over codes, softmax over the squared distances to
the codebook (level by level, each on its own residual); SIA is the symmetric KL between
the two, averaged over the batch's unique targets and the levels. The paper (Eq. 6) uses
softmax(-distance), the default here (`etegrec.sia_sign='negative'`); the official code
applies the softmax to +distance (`'positive'`).
PSA (preference-semantic alignment): the decoder's first-position final state through a
linear adapter to the item-embedding width, and the tokenizer's reconstruction of the
target item: symmetric in-batch InfoNCE (cosine, temperature 0.07) over unique targets.
As in the official code, both directions of SIA and PSA are summed, the other model runs
in inference mode (no dropout) while one is trained, and the tokenizer's L_recon + L_rq
are averaged over the batch's unique targets.

Shape letters: B batch, C tokenizer levels, K codes, D code width, F item-embedding width,
E d_model, N items.
"""
from __future__ import annotations

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec import distributed
from jaxrec.errors import CheckpointError, ConfigError
from jaxrec.methods.base import Method, decoding_eval_fn, init_t5, register
from jaxrec.optim import TrainState, optimizer_and_schedule
from jaxrec.recommender import steps
from jaxrec.recommender.t5 import T5
from jaxrec.tokenizer import codes as codes_lib
from jaxrec.tokenizer.rq import masked_mean
from jaxrec.tokenizer.rqvae import RQVAE, reconstruction_loss
from jaxrec.tokenizer.train import encode_catalogue
from jaxrec.training.plan import Bound, Plan, Stage, jit_step, n_params
from jaxrec.training.evaluation import evaluate_split, target_ranks
from jaxrec.training.run import save_final_codes

sg = jax.lax.stop_gradient


@flax.struct.dataclass
class EteState:
  step: jax.Array          # global step count (both kinds of step)
  rec: TrainState          # params {"t5", "enc_adapter", "dec_adapter"}
  tok: TrainState          # RQ-VAE params


# ------------------------------------------------------------------------- losses
def unique_targets(target_B, weight_B):
  """True at the first occurrence of each real target in the batch."""
  b = target_B.shape[0]
  earlier = jnp.arange(b)[None, :] < jnp.arange(b)[:, None]
  dup = jnp.any((target_B[:, None] == target_B[None, :]) & earlier & (weight_B[None, :] > 0),
                axis=1)
  return (weight_B > 0) & ~dup


def _kl(logp, logq):
  return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def sia_loss(seq_logits_BxCxK, item_logits_BxCxK, mask_B):
  """KL(p_seq || p_item) + KL(p_item || p_seq) of per-level softmax distributions, averaged
  over the masked rows and the levels."""
  a = jax.nn.log_softmax(seq_logits_BxCxK, axis=-1)
  b = jax.nn.log_softmax(item_logits_BxCxK, axis=-1)
  return masked_mean(_kl(a, b) + _kl(b, a), mask_B)


def _info_nce(q_BxF, k_BxF, mask_B, temperature):
  logits = q_BxF @ k_BxF.T / temperature
  logits = jnp.where(mask_B[None, :], logits, -1e9)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(q_BxF.shape[0]))
  return masked_mean(ce, mask_B)


def psa_loss(dec_BxF, recon_BxF, mask_B, temperature: float = 0.07):
  """Symmetric in-batch InfoNCE with cosine similarity over the masked rows (the other
  masked rows are the negatives)."""
  a = dec_BxF / jnp.maximum(jnp.linalg.norm(dec_BxF, axis=-1, keepdims=True), 1e-12)
  b = recon_BxF / jnp.maximum(jnp.linalg.norm(recon_BxF, axis=-1, keepdims=True), 1e-12)
  return _info_nce(b, a, mask_B, temperature) + _info_nce(a, b, mask_B, temperature)


# ------------------------------------------------------------------------- forward
def _adapter_apply(params, x):
  return x @ params["kernel"] + params["bias"]


def forward_terms(rec_params, tok_params, batch, codes_NxC, feats_NxF, key, *, t5: T5,
                  tok: RQVAE, train_rec: bool, train_tok: bool, sia_sign: str,
                  psa_temperature: float, short: tuple = ()):
  """Everything both steps need: code loss, SIA, PSA, the tokenizer's own loss (`short`:
  `steps.teacher_forced_states`' split of the batch)."""
  k_enc, k_dec, k_tok = jax.random.split(key, 3)   # encode and decode are separate applies
  p = rec_params["t5"]
  pooled, hidden = steps.teacher_forced_states(p, t5, batch, codes_NxC, train_rec,
                                               (k_enc, k_dec), short)
  _, labels = steps.decoder_io(codes_NxC, batch["target_B"], t5.cfg)
  logits = t5.apply(p, hidden, method=T5.logits)
  code, code_metrics = steps.code_loss(logits, labels, batch["weight_B"])

  seq_latent = _adapter_apply(rec_params["enc_adapter"], pooled)              # [B, D]
  dec_latent = _adapter_apply(rec_params["dec_adapter"], hidden[:, 0])        # [B, F]

  uniq = unique_targets(batch["target_B"], batch["weight_B"])
  x = feats_NxF[batch["target_B"]]
  tok_rngs = {"dropout": k_tok} if train_tok else {}
  x_hat, rq, _ = tok.apply(tok_params, x, train_tok, mask_B=uniq, rngs=tok_rngs)
  seq_rq = tok.apply(tok_params, seq_latent, False, method=RQVAE.quantize)
  sign = -1.0 if sia_sign == "negative" else 1.0
  sia = sia_loss(sign * seq_rq.dist_BxCxK, sign * rq.dist_BxCxK, uniq)
  psa = psa_loss(dec_latent, x_hat, uniq, psa_temperature)
  recon = reconstruction_loss(x_hat, x, uniq)
  return {"code": code, "sia": sia, "psa": psa, "recon": recon, "rq": rq.loss,
          "id_accuracy": code_metrics["id_accuracy"]}


def train_step(state: EteState, batch, codes_NxC, key, weights, feats_NxF, *, part: str, t5,
               tok, tx, lr_fn, sia_sign, psa_temperature, short: tuple = ()):
  """One AdamW step of one model (`part`), the other frozen and in inference mode:
  'rec': L_code + w_sia * SIA + w_psa * PSA -> recommender (and its adapters) only;
  'tok': L_recon + L_rq + w_sia * SIA + w_psa * PSA -> tokenizer only;
  'both' (`etegrec.alternation='joint'`, the ablation without alternation): L_code + L_recon
  + L_rq + w_sia * SIA + w_psa * PSA -> both models at once, both in training mode; `tx` and
  `lr_fn` are then dicts by part. `short` (`etegrec.short_rows`): the batch's short rows run
  apart when they fit (`steps.teacher_forced_states`), chosen by a `lax.cond` around the
  gradient (inside it, the backward pass would keep both ways' activations)."""
  k = jax.random.fold_in(key, state.step)
  parts = ("rec", "tok") if part == "both" else (part,)
  txs, lr_fns = (tx, lr_fn) if part == "both" else ({part: tx}, {part: lr_fn})

  def loss_fn(params, split):
    rec_params = params.get("rec", sg(state.rec.params))
    tok_params = params.get("tok", sg(state.tok.params))
    t = forward_terms(rec_params, tok_params, batch, codes_NxC, feats_NxF, k, t5=t5, tok=tok,
                      train_rec="rec" in params, train_tok="tok" in params, sia_sign=sia_sign,
                      psa_temperature=psa_temperature, short=split)
    own = ((t["code"] if "rec" in params else 0.0)
           + (t["recon"] + t["rq"] if "tok" in params else 0.0))
    return own + weights[0] * t["sia"] + weights[1] * t["psa"], t

  subs = {p: getattr(state, p) for p in parts}
  params = {p: sub.params for p, sub in subs.items()}
  grad_fn = lambda split: jax.value_and_grad(loss_fn, has_aux=True)(params, split)
  if steps.splits(batch, short):      # the batch's short rows apart when they fit
    (loss, t), grads = jax.lax.cond(steps.short_fits(batch, short), lambda: grad_fn(short),
                                    lambda: grad_fn(()))
  else:
    (loss, t), grads = grad_fn(())
  new = {}
  for p, sub in subs.items():
    updates, opt_state = txs[p].update(grads[p], sub.opt_state, sub.params)
    new[p] = TrainState(sub.step + 1, optax.apply_updates(sub.params, updates), opt_state)
  out = {"loss": loss, **t, "grad_norm": optax.tree.norm(grads),
         "lr": lr_fns[parts[0]](subs[parts[0]].step)}
  if part == "both":
    out["lr_tok"] = lr_fns["tok"](subs["tok"].step)
  return state.replace(step=state.step + 1, **new), out


@functools.partial(jax.jit, static_argnames=("model",))
def recode(tok_params, feats_NxF, old_codes_NxC1, *, model: RQVAE):
  """All items' codes from the current tokenizer, plus the collision level, on device.
  Returns (codes [N, C+1], fraction of items whose ID changed, fraction whose C semantic
  codes changed, largest collision group). The two fractions differ by the items whose
  collision code alone changed: an item joining or leaving a group renumbers the others."""
  codes = encode_catalogue(tok_params, feats_NxF, model=model)["codes_NxC"]
  suffix = codes_lib.suffix_level(codes)
  full = jnp.concatenate([codes, suffix[:, None]], axis=1).astype(jnp.int32)
  changed = jnp.mean(jnp.any(full != old_codes_NxC1, axis=1).astype(jnp.float32))
  semantic = jnp.mean(jnp.any(codes != old_codes_NxC1[:, :-1], axis=1).astype(jnp.float32))
  return full, changed, semantic, jnp.max(suffix) + 1


# ------------------------------------------------------------------------- the plan
MODES = ("alternate", "joint", "frozen")     # etegrec.alternation: the method and its ablations


def _mode(ec) -> str:
  return ec.get("alternation", "alternate")


def _tokenizer_epoch(mode: str, cycle: int, epoch: int) -> bool:
  """Whether the tokenizer trains in this epoch of the alternation stage: every `cycle`-th
  epoch (the method), every epoch ('joint', with the recommender), never ('frozen')."""
  return {"alternate": epoch % cycle == 0, "joint": True, "frozen": False}[mode]


def _validate(run) -> None:
  cfg, ec = run.cfg, run.cfg.etegrec
  if cfg.tokenizer.source != "rqvae":
    raise ConfigError("ETEGRec trains its tokenizer: tokenizer.source must be 'rqvae'")
  if run.tokenizer is None:
    raise CheckpointError(f"{run.workdir}: codes.npz is there but not the tokenizer it came "
                          "from (tokenizer.msgpack); remove codes.npz to train the tokenizer "
                          "again")
  if cfg.tokenizer.collision != "suffix":
    raise ConfigError("ETEGRec re-codes items during training with the collision level: "
                      "tokenizer.collision must be 'suffix'")
  if ec.sia_sign not in ("negative", "positive"):
    raise ConfigError(f"etegrec.sia_sign must be 'negative' or 'positive', got {ec.sia_sign!r}")
  if not 0.0 <= ec.get("warmup_frac", 0.0) < 1.0:
    raise ConfigError(f"etegrec.warmup_frac must be in [0, 1) (0: the step counts), got "
                      f"{ec.warmup_frac!r}")
  if ec.get("rec_schedule", "stage") not in ("stage", "all"):
    raise ConfigError(f"etegrec.rec_schedule must be 'stage' or 'all', got {ec.rec_schedule!r}")
  if not 0.0 <= ec.get("short_rows", 0.0) < 1.0:
    raise ConfigError(f"etegrec.short_rows must be in [0, 1) (0: off), got {ec.short_rows!r}")
  if _mode(ec) not in MODES:
    raise ConfigError(f"etegrec.alternation must be one of {MODES}, got {ec.alternation!r}")


def _optimizers(tc, ec, steps_per_epoch: int) -> dict:
  """(tx, schedule) of the recommender, the tokenizer and the fine-tuning: epochs 0, cycle,
  2 * cycle, ... train the tokenizer, the others the recommender; cosine schedules. The
  recommender's cosine spans its own steps (`etegrec.rec_schedule='stage'`), or, as the
  official trainer builds it, the steps of every epoch while advancing only in recommender
  epochs ('all': it ends part-way down). The ablations: 'joint' trains both in every epoch,
  'frozen' the recommender only."""
  n_tok = sum(_tokenizer_epoch(_mode(ec), ec.cycle, e) for e in range(tc.epochs))
  n_rec = tc.epochs if _mode(ec) == "joint" else tc.epochs - n_tok
  span = tc.epochs if ec.get("rec_schedule", "stage") == "all" else n_rec

  def adamw(lr, epochs, warmup, end_frac=0.0):
    return optimizer_and_schedule(lr, tc.weight_decay, max(epochs, 1) * steps_per_epoch, warmup,
                                  tc.clip, "cosine", tc.accumulate, tc.decay, end_frac)

  # the warm-ups: a fraction of each schedule's steps (`etegrec.warmup_frac`), or the
  # official step counts in micro-batches: the official schedules count batches of the whole
  # data set (max_steps from the loader before accelerate shards it, trainer.py:78, 201-209)
  # and accelerate steps them once per process at every update (AcceleratedScheduler, 4
  # processes), so one official scheduler step is one batch of 512, a micro-batch here
  frac = ec.get("warmup_frac", 0.0)
  rec_w = frac * span * steps_per_epoch if frac else ec.rec_warmup_steps
  tok_w = frac * n_tok * steps_per_epoch if frac else ec.tok_warmup_steps
  return {"rec": adamw(tc.lr, span, round(rec_w), tc.lr_end),
          "tok": adamw(ec.tok_lr, n_tok, round(tok_w)),
          "ft": adamw(ec.finetune_lr, ec.finetune_epochs, 0)}


def _initial_state(run, key, tx_rec, tx_tok) -> EteState:
  """The T5 and its two adapters (fresh) and the pre-trained RQ-VAE, each with its AdamW."""
  tok_model, tok_params = run.tokenizer
  k_t5, k_enc, k_dec = jax.random.split(key, 3)
  d, f = run.model.cfg.d_model, run.dataset.features[run.cfg.tokenizer.feature].shape[1]
  std = run.model.cfg.init_std        # > 0: every Linear N(0, std), bias 0 (the official init)
  dense = functools.partial(nn.Dense, kernel_init=nn.initializers.normal(std)) if std else nn.Dense
  rec_params = {"t5": init_t5(run, k_t5),
                "enc_adapter": dense(tok_model.cfg.code_dim).init(k_enc, jnp.zeros((1, d)))["params"],
                "dec_adapter": dense(f).init(k_dec, jnp.zeros((1, d)))["params"]}
  # a copy: the steps donate the state, and run.tokenizer keeps the pre-trained parameters
  tok_params = jax.tree.map(jnp.array, flax.core.unfreeze(tok_params))
  state = EteState(jnp.zeros((), jnp.int32),
                   TrainState(jnp.zeros((), jnp.int32), rec_params, tx_rec.init(rec_params)),
                   TrainState(jnp.zeros((), jnp.int32), tok_params, tx_tok.init(tok_params)))
  return distributed.replicate(state, run.replicated)


def short_part(run) -> tuple:
  """`etegrec.short_rows` as `steps.teacher_forced_states`' (rows, length, the batch's
  sharding): that share of a batch's rows (a multiple of the device count), padded to the
  smallest bucket that holds 95 % of the training histories
  (i.i.d. batches are padded to their longest: on Scientific 23.4 items on average for a
  mean of 3.3); () when off."""
  frac = run.cfg.etegrec.get("short_rows", 0.0)
  if not frac:
    return ()
  buckets = run.buckets
  lens = run.splits["train"].hist_len_S
  length = buckets[min(int(np.searchsorted(buckets, np.percentile(lens, 95))), len(buckets) - 1)]
  n = run.mesh.devices.size               # each part's rows split over the devices
  rows = int(round(frac * run.cfg.train.batch_size / n)) * n
  return (rows, int(length), run.batch_sharding)


def training_plan(run, key, steps_per_epoch: int) -> Plan:
  """The two stages of ETEGRec for the shared training loop (see the module docstring)."""
  _validate(run)
  cfg, ec, tc = run.cfg, run.cfg.etegrec, run.cfg.train
  tok_model = run.tokenizer[0]
  feats = distributed.replicate(jnp.asarray(run.dataset.features[cfg.tokenizer.feature],
                                            jnp.float32), run.replicated)
  opt = _optimizers(tc, ec, steps_per_epoch)
  state = _initial_state(run, key, opt["rec"][0], opt["tok"][0])
  common = dict(t5=run.model, tok=tok_model, sia_sign=ec.sia_sign,
                psa_temperature=ec.psa_temperature, short=short_part(run))
  mode = _mode(ec)
  parts = {"alternate": ("rec", "tok"), "joint": ("both",), "frozen": ("rec",)}[mode] + ("ft",)
  fns = {}
  for name in parts:
    if name == "both":
      tx, sched = {p: opt[p][0] for p in ("rec", "tok")}, {p: opt[p][1] for p in ("rec", "tok")}
    else:
      tx, sched = opt[name]
    fns[name] = jit_step(run, functools.partial(train_step, part="rec" if name == "ft" else name,
                                                tx=tx, lr_fn=sched, **common), f"train:{name}")
  aligned = jnp.asarray([ec.w_sia, ec.w_psa], jnp.float32)
  off = jnp.zeros(2, jnp.float32)

  def bind(fn, w):
    return Bound(fn, w, feats)

  def alternation_step(epoch):
    w = aligned if epoch >= ec.warm_epochs else off
    if mode == "joint":
      return bind(fns["both"], w)
    return bind(fns["tok"] if _tokenizer_epoch(mode, ec.cycle, epoch) else fns["rec"], w)

  sizes = run.table.sizes

  def recode_checked(state, epoch_label):
    codes, changed, semantic, largest = recode(state.tok.params, feats, run.codes,
                                               model=tok_model)
    largest = int(largest)
    if largest > sizes[-1]:
      raise ConfigError(f"after {epoch_label}, {largest} items share one semantic ID, more "
                        f"than the collision level's {sizes[-1]} codes: raise "
                        "tokenizer.suffix_size (the previous checkpoint is intact)")
    return codes, float(changed), float(semantic)

  def after_alternation_epoch(state, epoch, run):
    if not _tokenizer_epoch(mode, ec.cycle, epoch):
      return None, None
    codes, changed, semantic = recode_checked(state, f"tokenizer epoch {epoch + 1}")
    health = codes_lib.health_dict(codes[:, :-1], sizes[:-1])
    return codes, {"ids_changed": round(changed, 5), "semantic_changed": round(semantic, 5),
                   "largest_group": health["largest_group"],
                   "used": health["used"], "perplexity": health["perplexity"],
                   "collision_rate": health["collision_rate"]}

  def begin_finetune(state, best, run):
    if best is not None:
      rec_params = {"t5": best["params"], **best["extra"]["adapters"]}
      tok_params = best["extra"]["tok"]
    else:
      rec_params, tok_params = state.rec.params, state.tok.params
    tx_ft = opt["ft"][0]
    new = EteState(state.step,
                   TrainState(jnp.zeros((), jnp.int32), rec_params, tx_ft.init(rec_params)),
                   state.tok.replace(params=tok_params))
    new = distributed.replicate(new, run.replicated)
    codes, _, _ = recode_checked(new, "restoring the best checkpoint")
    return new, codes

  stages = [Stage("alternation", tc.epochs, alternation_step, tc.eval_every, tc.patience,
                  after_epoch=after_alternation_epoch)]
  if ec.finetune_epochs:
    stages.append(Stage("finetune", ec.finetune_epochs, lambda epoch: bind(fns["ft"], off),
                        ec.finetune_eval_every, ec.finetune_patience, begin=begin_finetune))
  return Plan(state, stages, rec_params=lambda s: s.rec.params["t5"],
              best_extra=lambda s: {"adapters": {k: s.rec.params[k] for k in
                                                 ("enc_adapter", "dec_adapter")},
                                    "tok": s.tok.params},
              global_step=lambda s: int(s.step), lr_at=None,
              n_params=n_params((state.rec.params, state.tok.params)),
              dynamic_codes=True, finish=finish)


def finish(run, best) -> dict:
  """The best checkpoint's IDs become the run's (`save_final_codes`), and its test metrics
  are also reported with the other decoding: the official code decodes free (IDs no item has
  are misses), every other row of the tables constrained, so both are in results.json (and
  both ranks in ranks.npz)."""
  out = save_final_codes(run, best)
  other = run.cfg.train.decode != "constrained"          # the mode the run did not use
  params = distributed.replicate(best["params"], run.replicated)
  name = "test_" + ("constrained" if other else "free")
  ranks, hook = target_ranks(run.dataset.n_users)
  out[name] = evaluate_split(run, params, "test", on_batch=hook,
                             eval_fn=decoding_eval_fn(run, constrained=other))
  out["ranks"] = {name: ranks}
  return out


class ETEGRec(Method):
  name = "etegrec"
  models = ("t5",)                     # its losses read the T5's encoder states

  def training_plan(self, run, key, steps_per_epoch: int) -> Plan:
    return training_plan(run, key, steps_per_epoch)


METHOD = register(ETEGRec())
