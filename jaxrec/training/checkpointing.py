"""A run's checkpoints: the resumable states (`checkpoints/train`, the two newest) and the
best on validation (`checkpoints/best`), never saved with a NaN / Inf in them; resuming
from the newest intact one, and restoring the best onto any mesh.

A resumable checkpoint holds {"train": the plan's state, "codes": the current code table}
and the loop's state as JSON meta; the best one {"params", "codes", "extra"}.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec import distributed
from jaxrec.checkpoint import Checkpoints, read_jsonl, write_atomic
from jaxrec.errors import CheckpointError
from jaxrec.training.plan import Plan
from jaxrec.training.run import Run, set_codes


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def check_finite(tree, stage: str, step: int, what: str) -> None:
  """Refuses to save a state with NaN / Inf: the newest checkpoint stays the last finite one."""
  if not bool(_all_finite(tree)):
    raise FloatingPointError(
        f"{what} is not finite at step {step} (stage {stage}): not saved; lower train.lr or "
        "check the data (the newest checkpoint on disk is the last finite state)")


def truncate_jsonl(path: str, max_step: int) -> None:
  """Drops log lines written after the checkpoint a run resumes from (and a last line
  torn by a kill mid-write)."""
  if not os.path.exists(path):
    return
  write_atomic(path, "".join(json.dumps(r) + "\n" for r in read_jsonl(path)
                             if r.get("step", 0) <= max_step))


class RunCheckpoints:
  """The train/ and best/ checkpoints of a run's workdir."""

  def __init__(self, run: Run, plan: Plan):
    self.run, self.plan = run, plan
    directory = os.path.join(run.workdir, "checkpoints")
    self.train = Checkpoints(os.path.join(directory, "train"), max_to_keep=2)
    self.best = Checkpoints(os.path.join(directory, "best"), max_to_keep=1)

  def _tree(self, state):
    """What a resumable checkpoint holds: the plan's state and the current code table."""
    codes = self.run.codes
    return {"train": state} if codes is None else {"train": state, "codes": codes}

  def save(self, step: int, state, meta: dict, stage: str) -> None:
    check_finite(state, stage, step, "the training state")
    self.train.save(step, self._tree(state), meta)

  def save_best(self, step: int, state, epoch: int, stage_index: int, stage: str) -> None:
    tree = {"params": self.plan.rec_params(state)}
    if self.run.codes is not None:
      tree["codes"] = self.run.codes
    extra = self.plan.best_extra(state)
    if extra:
      tree["extra"] = extra
    check_finite(tree, stage, step, "the best parameters")
    self.best.save(step, tree, {"epoch": epoch, "stage": stage_index})

  def best_tree(self):
    """The best checkpoint's tree, or None."""
    restored = self.best.restore(None)
    return restored[1] if restored else None

  def resume(self, log):
    """(step, state, meta) of the newest intact checkpoint, or None when there is none."""
    run, plan, ckpt = self.run, self.plan, self.train
    for name in ckpt.partial:
      log(f"{ckpt.directory}/{name}: a save interrupted by the last run's end was removed")
    if not ckpt.steps():
      if ckpt.partial:
        log("no complete checkpoint is left: training starts from step 0")
      return None
    restored = ckpt.restore(self._tree(plan.state))
    if restored is None:
      raise CheckpointError(f"{ckpt.directory}: checkpoints exist but none could be restored; "
                            "move them away (or use a new --workdir) to start over")
    step0, tree, meta = restored
    if meta.get("best") is not None and not self.best.steps():
      raise CheckpointError(
          f"{self.best.directory}: the best checkpoint (step {meta['best']['step']}) this run "
          "recorded is missing, so its result could not be reported; restore the folder or "
          "start over in a new --workdir")
    if plan.dynamic_codes:
      set_codes(run, tree["codes"])
    elif run.codes is not None and not np.array_equal(np.asarray(tree["codes"]),
                                                       run.table.codes_NxC):
      raise CheckpointError(f"{run.workdir}: the checkpoint's code table differs from "
                            "codes.npz (was codes.npz replaced?): restore it or start over in "
                            "a new --workdir")
    if distributed.is_primary():
      truncate_jsonl(os.path.join(run.workdir, "metrics.jsonl"), step0)
    return step0, run.place_state(tree["train"]), meta

  def close(self) -> None:
    self.train.close()
    self.best.close()


def restore_best(run: Run):
  """The best checkpoint: (step, {"params", "codes"[, "extra"]} replicated over the run's
  mesh, meta) or None. The mesh may differ from the one that saved it (another device
  count, e.g. `--cpu_devices`)."""
  path = os.path.join(run.workdir, "checkpoints", "best")
  if not os.path.isdir(path):        # nothing to restore (and no empty folder left behind)
    return None
  best = Checkpoints(path, max_to_keep=1)
  try:
    restored = best.restore(None, sharding=run.replicated)
  finally:
    best.close()
  if restored is None:
    return None
  step, tree, meta = restored
  return step, distributed.replicate(tree, run.replicated), meta
