"""SIIT (Chen et al., arXiv 2412.17171, "Enhancing Item Tokenization for Generative
Recommendation through Self-Improvement"): the recommender refines its own item IDs.

A documented RECONSTRUCTION: no code was released and the paper gives no hyper-parameter
table; the paper's recommender is an LLM: here any recommender (`model.kind`: the shared
T5 by default; the decoder-only model or a pretrained LLM, `siit:tiny_llm`). Every choice
below is ours and is a config value (`config.siit`):

  start      any code table: the run's `tokenizer` (RQ-VAE as TIGER / LETTER, `given`,
             `random`), or `siit.init_codes` = a workdir holding codes.npz (e.g. a SimCIT
             run's); the collision level, if any, is one more refinable level.
  training   every step is the usual history -> next-ID loss (R) plus `align_ratio` x batch
             items of the alignment task (A): the item's content vector (the tokenizer's
             input feature `siit.feature`), projected to `soft_tokens` vectors of the
             model's width, as the T5's encoder input (a decoder's prefix, before its
             BOS or prompt tail); the item's current ID as target. How the paper mixes
             the two tasks is not in the text available here (a summary lists
             "sequential-recommendation fine-tuning, item-identifier alignment, and
             identifier refinement" as stages); this reconstruction trains them together
             as LC-Rec's multi-task data does: one A item per four R samples (ratio 0.25)
             in every step, without a second compiled step, the loss the per-sample mean
             over both tasks' samples (`align_loss='mixed'`; 'sum', R's mean plus A's
             mean, weighs each A item 1 / align_ratio times an R sample: what this
             reconstruction did before). `first_refine` delays the first refinement until
             the alignment task is learnt.
  refining   after `first_refine` epochs (0: `refine_every`), then after every `refine_every`
             more, `rounds` times in all: each item's ID is decoded
             from task A by a beam of width `beam` over the FULL code space per level (not
             the constrained beam: refinement may create IDs no item had); candidates are
             rescored with a usage penalty, score - `usage_penalty` * log(1 + n), n the
             number of items whose best candidate uses the same first-level code, and
             assigned greedily, best score first, so that no two items share an ID and no
             code at any level holds more than `capacity` items (0: no cap); an item left
             without a free candidate keeps its ID if that fits, else takes the free ID
             nearest its best candidate (deepest levels varied first). With `keep_margin`
             (default 1.0) an item keeps its ID unless its best candidate's task-A
             log-probability beats its current ID's (`score_ids`, teacher-forced) by more
             than the margin, and current IDs stay reserved for their items: a weak task-A
             model otherwise scatters items over free IDs (most best candidates collide)
             and the recommender loses what it learnt. A moving item whose best candidate
             another item took takes a lower one only if it too beats its current ID by
             the margin (`movers='better'`), else keeps its ID (`'any'`: any free
             candidate, as before 2026-12-06). The table is swapped on device (the
             recommender keeps its weights) and training continues.
  logged     per round: how well task A is learnt (`align_top1`: the share of items whose
             best task-A candidate is their current ID), fraction of items whose ID changed
             (per level), collisions among the
             best candidates before the greedy assignment, codes used and perplexity per
             level, valid metrics before and after, and (with `keep_margin`) the share of
             items moved to an ID that does not beat theirs by the margin
             (`moved_not_better`: 0 with `movers='better'`).

Shape letters: B batch, C levels, K codes, N items, S soft tokens, W beams, D d_model.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec import distributed
from jaxrec.errors import ConfigError
from jaxrec.methods.base import Method, init_t5, register
from jaxrec.optim import TrainState, apply_step
from jaxrec.tokenizer import build
from jaxrec.tokenizer import codes as codes_lib
from jaxrec.training.evaluation import evaluate_split
from jaxrec.training.plan import Bound, Plan, Stage, adamw, jit_step, n_params, n_trained
from jaxrec.training.run import save_final_codes, set_codes


def required_features(cfg):
  return (cfg.siit.feature,)


def build_code_table(cfg, dataset, key, workdir=None, log=print, n_devices: int = 1):
  """The start table: `siit.init_codes`' codes.npz, else the shared build from `tokenizer`."""
  del n_devices
  if cfg.siit.init_codes:
    return codes_lib.CodeTable.from_flag(cfg.siit.init_codes, "siit.init_codes",
                                         dataset.n_items), None
  return build.build_code_table(cfg.tokenizer, dataset, key, cfg.seed, workdir=workdir, log=log)


# ------------------------------------------------------------------------- task A
class SoftTokens(nn.Module):
  """Content vector [B, F] -> S encoder input vectors [B, S, D]."""
  tokens: int
  width: int

  @nn.compact
  def __call__(self, x_BxF):
    y = nn.Dense(self.tokens * self.width)(x_BxF)
    return y.reshape(x_BxF.shape[0], self.tokens, self.width)


def soft_inputs(params, soft: SoftTokens, feats_BxF):
  """Items' content vectors as the recommender's input vectors [B, S, D]."""
  return soft.apply(params["soft"], feats_BxF)


def train_step(state: TrainState, batch, codes_NxC, key, feats_NxF, *, rec, model, soft, tx,
               tau, n_align: int, mixed: bool = True):
  """R on the batch plus A on `n_align` items drawn uniformly; keys from fold_in(step).
  `mixed`: the loss is the per-sample mean over the R samples and the A items together (a
  batch of both tasks' samples, as a multi-task data set mixes them); else R's mean plus A's
  mean (`siit.align_loss='sum'`: each A item weighs batch / n_align times an R sample).
  `rec` is the recommender's steps module (`recommender.family`), `model` its model;
  params {"t5": the recommender's (whichever kind: the name older checkpoints have),
  "soft": SoftTokens'}."""
  step_key = jax.random.fold_in(key, state.step)
  k_items, k_align = jax.random.split(jax.random.fold_in(step_key, 1))

  def loss_fn(params):
    loss, out = rec.batch_loss(params["t5"], batch, codes_NxC, step_key, model=model, tau=tau)
    if n_align:
      items = jax.random.randint(k_items, (n_align,), 0, codes_NxC.shape[0])
      a = rec.soft_loss(params["t5"], soft_inputs(params, soft, feats_NxF[items]),
                        codes_NxC[items], k_align, model=model)
      if mixed:
        w = jnp.sum(batch["weight_B"])               # the batch's real R samples
        loss = (w * loss + n_align * a) / (w + n_align)
      else:
        loss = loss + a
      out = dict(out, align=a, loss=loss)
    return loss, out

  return apply_step(state, loss_fn, tx)


# ------------------------------------------------------------------------- refinement
@functools.partial(jax.jit, static_argnames=("rec", "model", "soft", "beam"))
def decode_items(params, feats_BxF, *, rec, model, soft: SoftTokens, beam: int):
  """Task-A decoding of a batch of items over the full code space: codes [B, W, C], scores."""
  return rec.soft_search(params["t5"], soft_inputs(params, soft, feats_BxF), model=model,
                         beam=beam)


@functools.partial(jax.jit, static_argnames=("rec", "model", "soft"))
def score_ids(params, feats_BxF, codes_BxC, *, rec, model, soft: SoftTokens):
  """Task-A log-probability of the given IDs (teacher-forced; the beam's scores)."""
  return rec.soft_score(params["t5"], soft_inputs(params, soft, feats_BxF), codes_BxC,
                        model=model)


def greedy_assign(cand_NxWxC, score_NxW, current_NxC, sizes, capacity: int = 0,
                  usage_penalty: float = 0.0, current_score_N=None, keep_margin=None,
                  movers: str = "better"):
  """Collision-free IDs from ranked candidates (host, NumPy): see the module docstring.
  With `keep_margin` (and the current IDs' own task-A scores `current_score_N`), an item
  keeps its ID unless its best candidate scores more than `keep_margin` above it, and every
  current ID stays reserved for its item (a moving item never takes another's ID); a moving
  item takes only a candidate that beats its current ID by more than the margin too
  (`movers='better'`), else it keeps its ID; `movers='any'`: any free candidate, however low
  (this reconstruction before 2026-12-06: a mover whose best candidate another item took
  could land on an ID its task-A model scores below its own).
  Returns (codes [N, C], collisions among the best candidates before assignment)."""
  if movers not in ("better", "any"):
    raise ConfigError(f"siit.movers={movers!r}: 'better' or 'any'")
  cand = np.asarray(cand_NxWxC)
  score = np.asarray(score_NxW, np.float64).copy()
  n, w, c = cand.shape
  current_NxC = np.asarray(current_NxC)
  keep = np.zeros(n, bool)
  if keep_margin is not None:
    gain = score - np.asarray(current_score_N, np.float64)[:, None]
    keep = gain[:, 0] <= keep_margin
    if movers == "better":               # a candidate no better than the current ID: never
      score[gain <= keep_margin] = -np.inf
  best_first = cand[:, 0, 0]
  first_use = np.bincount(best_first, minlength=sizes[0])
  score -= usage_penalty * np.log1p(first_use[cand[:, :, 0]])
  collisions = n - len({tuple(x) for x in cand[:, 0]})
  taken, out = set(), np.full((n, c), -1, np.int64)
  use = [np.zeros(s, np.int64) for s in sizes]
  cap = capacity if capacity > 0 else n

  def fits(code):
    return tuple(code) not in taken and all(use[l][code[l]] < cap for l in range(c))

  def take(i, code):
    out[i] = code
    taken.add(tuple(code))
    for l in range(c):
      use[l][code[l]] += 1

  for i in np.flatnonzero(keep):
    take(i, current_NxC[i])
  if keep_margin is not None:             # the movers' own IDs stay theirs to fall back on
    taken.update(tuple(x) for x in current_NxC[~keep])
  order = np.argsort(-score, axis=None, kind="stable")
  for flat in order:
    i, r = divmod(int(flat), w)
    if out[i, 0] < 0 and np.isfinite(score[i, r]) and fits(cand[i, r]):
      take(i, cand[i, r])
  def nearest_free(best):
    """The first free ID within capacity, varying the deepest levels of `best` first."""
    def search(prefix, level):
      if level == c:
        return prefix if fits(prefix) else None
      for k in [best[level]] + [k for k in range(sizes[level]) if k != best[level]]:
        if use[level][k] < cap:
          found = search(prefix + [k], level + 1)
          if found is not None:
            return found
      return None
    return search([], 0)

  for i in np.flatnonzero(out[:, 0] < 0):      # no free candidate within capacity
    if keep_margin is not None:
      take(i, current_NxC[i])             # reserved above
      continue
    code = current_NxC[i] if fits(current_NxC[i]) else nearest_free(list(cand[i, 0]))
    if code is None:
      raise ConfigError(f"item {i}: no free ID within capacity {cap}: raise siit.capacity")
    take(i, np.asarray(code))
  return out.astype(np.int32), int(collisions)


def new_id_score(cand_NxWxC, score_NxW, codes_NxC):
  """Each item's task-A score of its assigned ID among its candidates (-inf where the ID is
  none of them)."""
  hit_NxW = np.all(np.asarray(cand_NxWxC) == np.asarray(codes_NxC)[:, None], axis=-1)
  return np.where(hit_NxW.any(1), np.where(hit_NxW, score_NxW, -np.inf).max(1), -np.inf)


def moved_not_better(cand_NxWxC, score_NxW, current_score_N, current_NxC, new_NxC, margin):
  """bool [N]: the items moved to an ID whose task-A score does not beat their current ID's
  by the margin."""
  moved = np.any(np.asarray(new_NxC) != np.asarray(current_NxC), axis=1)
  better = new_id_score(cand_NxWxC, score_NxW, new_NxC) - current_score_N > margin
  return moved & ~better


def candidates(params, feats_NxF, codes_NxC, rec, model, soft, beam: int, batch: int,
               own: bool):
  """Every item's task-A candidates over the full code space, batch by batch: (codes
  [N, W, C], scores [N, W], the current IDs' own task-A scores [N] or None)."""
  cands, scores, current = [], [], []
  for s in range(0, feats_NxF.shape[0], batch):
    rows = slice(s, s + batch)
    c, sc = decode_items(params, feats_NxF[rows], rec=rec, model=model, soft=soft, beam=beam)
    cands.append(np.asarray(c))
    scores.append(np.asarray(sc))
    if own:
      current.append(np.asarray(score_ids(params, feats_NxF[rows], codes_NxC[rows], rec=rec,
                                          model=model, soft=soft)))
  return (np.concatenate(cands), np.concatenate(scores),
          np.concatenate(current) if current else None)


# ------------------------------------------------------------------------- the plan
def refine_round(done: int, *, first: int, every: int, rounds: int):
  """The refinement round (1, 2, ...) that ends after `done` epochs, or None: rounds after
  `first` epochs (0: `every`), then every `every` more, `rounds` in all."""
  first = first or every
  k, r = divmod(done - first, every)
  return k + 1 if done >= first and not r and k < rounds else None


def training_plan(run, key, steps_per_epoch: int):
  """One stage whose epochs end, every `refine_every` of them (up to `rounds` times), with
  a refinement of the code table."""
  sc, tc = run.cfg.siit, run.cfg.train
  if (sc.rounds < 0 or sc.refine_every < 1 or sc.beam < 1 or not 0 <= sc.align_ratio <= 4
      or sc.get("first_refine", 0) < 0 or sc.get("align_loss", "sum") not in ("mixed", "sum")
      or sc.get("movers", "any") not in ("better", "any")):
    raise ConfigError(f"siit: rounds={sc.rounds} (>= 0), refine_every={sc.refine_every} (>= 1), "
                      f"beam={sc.beam} (>= 1), align_ratio={sc.align_ratio} (0..4), "
                      f"first_refine={sc.get('first_refine', 0)} (>= 0), "
                      f"align_loss={sc.get('align_loss', 'sum')!r} ('mixed' or 'sum'), "
                      f"movers={sc.get('movers', 'any')!r} ('better' or 'any')")
  if sc.rounds and run.cfg.tokenizer.get("shared_ids", False):
    raise ConfigError("siit.rounds > 0 with tokenizer.shared_ids=True: a refinement round "
                      "assigns unique IDs (items keeping a shared ID would keep sharing it, "
                      "which the rebuilt decoding tables do not allow); set siit.rounds=0 or "
                      "tokenizer.shared_ids=False")
  if sc.capacity and sc.capacity * min(run.table.sizes) < run.dataset.n_items:
    raise ConfigError(f"siit.capacity={sc.capacity}: {min(run.table.sizes)} codes of the "
                      f"smallest level cannot hold {run.dataset.n_items} items")
  model, rec = run.model, run.steps
  feats = distributed.replicate(jnp.asarray(run.dataset.features[sc.feature], jnp.float32),
                                run.replicated)
  soft = SoftTokens(int(sc.soft_tokens), model.cfg.d_model)
  params = {"t5": init_t5(run, key),
            "soft": soft.init(jax.random.fold_in(key, 1), feats[:1])}
  frozen = rec.trainable(model)          # LoRA: the recommender's mask; the soft tokens train
  trainable = None if frozen is None else (
      lambda p: {"t5": frozen(p["t5"]), "soft": jax.tree.map(lambda _: True, p["soft"])})
  tx, lr_at, state = adamw(run, params, steps_per_epoch, trainable)
  n_align = int(round(sc.align_ratio * tc.batch_size))
  fn = jit_step(run, functools.partial(train_step, rec=rec, model=model, soft=soft, tx=tx,
                                       tau=tc.tau, n_align=n_align,
                                       mixed=sc.get("align_loss", "sum") == "mixed"),
               state=state)
  step = Bound(fn, feats)
  sizes = run.table.sizes
  round_at = functools.partial(refine_round, first=int(sc.get("first_refine", 0)),
                               every=sc.refine_every, rounds=sc.rounds)

  def refine(state, epoch, run):
    """A refinement round; it installs the new table itself (to evaluate it), so the loop
    gets no table to install."""
    k = round_at(epoch + 1)
    if k is None:
      return None, None
    before = evaluate_split(run, state.params["t5"], "valid")
    current = np.asarray(run.codes)
    margin = sc.get("keep_margin", -1.0)
    margin = None if margin < 0 else float(margin)
    cands, scores, current_score = candidates(state.params, feats, run.codes, rec, model, soft,
                                              int(sc.beam), tc.eval_batch_size, margin is not None)
    new, collisions = greedy_assign(cands, scores, current, sizes, int(sc.capacity),
                                    float(sc.usage_penalty), current_score, margin,
                                    sc.get("movers", "any"))
    health = codes_lib.health_dict(new, sizes)
    moved = np.any(new != current, axis=1)
    record = {"round": k,
              "align_top1": round(float(np.mean(np.all(cands[:, 0] == current, axis=1))), 5),
              "ids_changed": round(float(np.mean(moved)), 5),
              "changed_per_level": [round(float(x), 5) for x in np.mean(new != current, axis=0)],
              "best_candidate_collisions": collisions, "used": health["used"],
              "perplexity": health["perplexity"], "distinct_ids": health["distinct_ids"],
              "valid_before": {k: before[k] for k in ("recall@10", "ndcg@10")}}
    if margin is not None:
      record["moved_not_better"] = round(float(np.mean(
          moved_not_better(cands, scores, current_score, current, new, margin))), 5)
    set_codes(run, jnp.asarray(new))
    after = evaluate_split(run, state.params["t5"], "valid")
    record["valid_after"] = {k: after[k] for k in ("recall@10", "ndcg@10")}
    return None, record

  stage = Stage("train", tc.epochs, lambda epoch: step, tc.eval_every, tc.patience,
                after_epoch=refine)
  return Plan(state, [stage], rec_params=lambda s: s.params["t5"],
              best_extra=lambda s: {"soft": s.params["soft"]},
              global_step=lambda s: int(s.step), lr_at=lambda s, i: float(lr_at(i)),
              n_params=n_params(params), n_trained=n_trained(params, trainable),
              dynamic_codes=True, finish=save_final_codes)


class SIIT(Method):
  name = "siit"

  def required_features(self, cfg):
    return required_features(cfg)

  def build_code_table(self, cfg, dataset, key, workdir=None, log=print, n_devices: int = 1):
    return build_code_table(cfg, dataset, key, workdir=workdir, log=log, n_devices=n_devices)

  def training_plan(self, run, key, steps_per_epoch: int) -> Plan:
    return training_plan(run, key, steps_per_epoch)


METHOD = register(SIIT())
