"""SASRec as a method of the shared loop: the sequential baseline every paper of the field
reports, and the source of the collaborative item embeddings LETTER and ETEGRec consume.

A Plan of one stage over item ids (no tokenizer, no code table): training samples are
windows of each user's training prefix with every position a target
(`data.sequence_windows`); evaluation ranks the whole catalogue by the item table's dot
products (`recommender/sasrec.py`). At the end the best checkpoint's item table is written
as `<name>.sasrec<d>.npy` in the workdir (float32 [N, d], row i = item i: the layout the
readers take, `data.features=("sasrec<d>",)`).

`model.item_input` 'codes' or 'id+codes' makes the item vectors read a code table, the
codes.npz of `model.codes` (a generative run's workdir): the steps get it bound as a constant
argument, not as the run's code table (SASRec ranks items, it decodes no IDs).
"""
from __future__ import annotations

import functools
import os

import numpy as np

from jaxrec import distributed, metrics
from jaxrec.config import ConfigError
from jaxrec.data import sequence_windows
from jaxrec.methods.base import Method, register
from jaxrec.recommender import sasrec
from jaxrec.tokenizer.codes import CodeTable
from jaxrec.training.plan import single_stage_plan
from jaxrec.xla import jit_init


def validate(cfg, n_items: int) -> None:
  """Refuses settings that cannot train, before any work."""
  m, t = cfg.model, cfg.train
  problems = []
  if m.loss not in sasrec.LOSSES:
    problems.append(f"model.loss={m.loss!r}: must be one of {sasrec.LOSSES}")
  item_input = m.get("item_input", "id")
  if item_input not in sasrec.ITEM_INPUTS:
    problems.append(f"model.item_input={item_input!r}: must be one of {sasrec.ITEM_INPUTS}")
  elif item_input != "id" and not m.get("codes"):
    problems.append(f"model.item_input={item_input!r} reads a code table: set model.codes to "
                    "a workdir holding codes.npz (a generative run's)")
  if m.d < 1 or m.blocks < 0 or m.heads < 1 or m.d % m.heads:
    problems.append(f"model.d={m.d}, model.heads={m.heads}, model.blocks={m.blocks}: need "
                    "d >= 1 divisible by heads >= 1, blocks >= 0")
  if not 0.0 <= m.dropout < 1.0:
    problems.append(f"model.dropout={m.dropout}: must be in [0, 1)")
  if cfg.data.max_len < 1:
    problems.append(f"data.max_len={cfg.data.max_len}: must be >= 1")
  if n_items < 2:
    problems.append(f"the data set has {n_items} item(s): ranking needs at least 2")
  elif m.loss == "sampled" and not 1 <= m.negatives < n_items:
    problems.append(f"model.negatives={m.negatives}: sampled softmax needs 1 <= negatives < "
                    f"{n_items} (the catalogue); use model.loss='ce' for the full softmax")
  if t.batch_size < 1 or t.eval_batch_size < 1:
    problems.append(f"train.batch_size={t.batch_size}, train.eval_batch_size="
                    f"{t.eval_batch_size}: must be >= 1")
  if problems:
    raise ConfigError("; ".join(problems))


def item_codes(cfg, n_items: int):
  """The code table the item vectors read (`model.item_input` with codes), else None."""
  if cfg.model.get("item_input", "id") == "id":
    return None
  return CodeTable.from_flag(cfg.model.codes, "model.codes", n_items)


def setup_model(run) -> None:
  """The SASRec model, its window samples and its full-ranking evaluation step; the steps
  read the item code table as `codes_NxC` (`step_args`)."""
  cfg, ds = run.cfg, run.dataset
  validate(cfg, ds.n_items)
  table = item_codes(cfg, ds.n_items)
  run.splits = {**run.splits, "train": sequence_windows(ds, cfg.data.max_len)}
  run.model = sasrec.SASRec(sasrec.model_config(cfg.model, ds.n_items, cfg.data.max_len,
                                                table.sizes if table else ()))
  run.step_args = {} if table is None else {"codes_NxC": table.codes_NxC}
  run.eval_fn = ranking_eval_fn(run, metrics.RANKED)
  run.recommend_fn = functools.partial(sasrec.recommend_step, model=run.model, **run.step_args)


def ranking_eval_fn(run, k: int):
  """Full-catalogue ranking on the run's mesh: the top `k` items (at most the catalogue)."""
  return distributed.per_device_eval(functools.partial(
      sasrec.eval_step, model=run.model, k=min(k, run.dataset.n_items), **run.step_args),
      run.mesh)


def _train_step(state, batch, codes, key, **kw):
  del codes  # the loop hands every step the run's code table; SASRec has none (`step_args`)
  return sasrec.train_step(state, batch, key, **kw)


def training_plan(run, key, steps_per_epoch: int):
  """One stage: AdamW on the configured loss (train.* as for the T5)."""
  m = run.cfg.model
  batch = {"history_BxL": np.zeros((2, run.buckets[0]), np.int32),
           "mask_BxL": np.ones((2, run.buckets[0]), bool)}
  params = jit_init(run.model, {"params": key}, batch["history_BxL"], batch["mask_BxL"],
                    train=False, **run.step_args)
  step = lambda tx: functools.partial(_train_step, model=run.model, tx=tx, loss=m.loss,
                                      negatives=m.negatives, **run.step_args)
  return single_stage_plan(run, params, step, steps_per_epoch, finish=export_embeddings)


def export_embeddings(run, best) -> dict:
  """Writes the best checkpoint's item table as <name>.sasrec<d>.npy in the workdir."""
  table = np.asarray(sasrec.item_table(best["params"], model=run.model, **run.step_args),
                     np.float32)
  path = os.path.join(run.workdir, f"{run.dataset.name}.sasrec{table.shape[1]}.npy")
  if distributed.is_primary():
    tmp = path + ".tmp.npy"
    np.save(tmp, table)
    os.replace(tmp, path)
  return {"cf_embeddings": path}


class SASRec(Method):
  name = "sasrec"
  kind = "items"
  heads = ()

  def setup_model(self, run, log=print) -> None:
    del log
    setup_model(run)

  def eval_fn(self, run, width: int):
    return ranking_eval_fn(run, width)

  def training_plan(self, run, key, steps_per_epoch: int):
    return training_plan(run, key, steps_per_epoch)


METHOD = register(SASRec())
