"""The training loop: runs a `Plan`'s stages over the run's batches, evaluates on the
validation split, keeps the best checkpoint, stops early, resumes bit for bit. It knows no
model and no method: steps, evaluation and code tables come from the plan and the run.

The loop's own state (`LoopState`) is saved as the resumable checkpoints' JSON meta;
checkpoints written when it was a dict of the same keys resume unchanged.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Optional

import jax
import numpy as np
from tensorboardX import SummaryWriter
from tqdm import tqdm

from jaxrec import distributed
from jaxrec.data import BatchIterator, eval_lengths, gather_batch
from jaxrec.errors import CheckpointError
from jaxrec.training.checkpointing import RunCheckpoints
from jaxrec.training.evaluation import Selection
from jaxrec.training.plan import Plan, Stage
from jaxrec.training.run import Run, set_codes
from jaxrec.xla import compile_listener


@dataclasses.dataclass
class LoopState:
  """Where training stands; saved with every resumable checkpoint."""
  evals: list = dataclasses.field(default_factory=list)  # every validation record
  best: Optional[dict] = None         # {"step", "epoch", "stage", selection key: score}
  bad_evals: int = 0                  # evaluations since the best (early stopping)
  done: bool = False
  train_seconds: float = 0.0
  train_samples: float = 0
  stage: int = 0                      # index into plan.stages
  stage_start: int = 0                # the epoch the current stage began at
  stage_over: bool = False            # the current stage stopped early
  iterator: Optional[dict] = None     # the batch iterator's state

  @classmethod
  def from_meta(cls, meta: dict) -> "LoopState":
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in meta.items() if k in names})

  def to_meta(self) -> dict:
    return dataclasses.asdict(self)


def check_and_log(pending, *, write, bar, tc, plan: Plan, stage: str, epoch: int, state,
                  samples: float, t_epoch: float, force: bool = False) -> None:
  """Fetches a step's metrics (one step late, so the host never stalls the device), stops
  on a non-finite loss, and writes a record every train.log_every steps."""
  step, out = pending
  loss = float(out["loss"])
  if not np.isfinite(loss):
    raise FloatingPointError(
        f"training loss is {loss} at step {step} (stage {stage}, epoch {epoch + 1}): lower "
        "train.lr or check the data; no state after the last finite loss was saved")
  rate = samples / max(time.time() - t_epoch, 1e-9)
  bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{rate:.0f}", refresh=False)
  if step % tc.log_every == 0 or force:
    record = {"step": step, "epoch": epoch + 1,
              **{k: round(float(v), 6) for k, v in out.items() if k != "lr"},
              "lr": float(out["lr"]) if "lr" in out else plan.lr_at(state, step - 1),
              "samples_per_s": round(rate, 1)}
    for k in ("id_accuracy", "grad_norm"):
      if k in record:
        record[k] = round(record[k], 4)
    write(record)


class Loop:
  """One run of a plan; `train()` returns the best checkpoint's tree."""

  def __init__(self, run: Run, plan: Plan, train_it: BatchIterator, key, log):
    self.run, self.plan, self.train_it, self.key, self.log = run, plan, train_it, key, log
    self.tc = run.cfg.train
    self.select = Selection(self.tc.select)
    self.ckpt = RunCheckpoints(run, plan)
    self.state, self.ls, self.step = plan.state, LoopState(), plan.global_step(plan.state)
    self.metrics_f = self.events = None

  # -------------------------------------------------------------------- bookkeeping
  def resume(self) -> None:
    restored = self.ckpt.resume(self.log)
    if restored is None:
      return
    step0, self.state, meta = restored
    self.ls = LoopState.from_meta(meta)
    self.train_it.set_state(self.ls.iterator)
    self.step = self.plan.global_step(self.state)
    self.log(f"resumed from {self.ckpt.train.directory}/{step0} (epoch {self.train_it.epoch}, "
             f"step {step0}, stage {self.plan.stages[self.ls.stage].name})")
    if self.ls.stage_over and self.ls.bad_evals < self.stage.patience:
      # stopped early under a smaller patience than this config's (a copy whose config.json
      # was given more: bench/experiments/more_patience.py): the stage goes on from here,
      # as a run with this patience would have
      self.ls.stage_over = self.ls.done = False
      self.log(f"stage {self.stage.name} reopened: {self.ls.bad_evals} evaluations without "
               f"a gain, patience {self.stage.patience}")

  def write(self, record: dict, events: bool = True) -> None:
    if self.metrics_f is not None:
      self.metrics_f.write(json.dumps(record) + "\n")
      self.metrics_f.flush()
    if self.events is not None and events:   # the same record, as TensorBoard scalars
      group = record.get("split") or ("train" if "loss" in record else "codes")
      for k, v in record.items():
        if k not in ("step", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool):
          self.events.add_scalar(f"{group}/{k}", v, record["step"])

  def save(self) -> None:
    self.ls.iterator = self.train_it.get_state()
    self.ckpt.save(self.step, self.state, self.ls.to_meta(), self.stage.name)

  @property
  def stage(self) -> Stage:
    return self.plan.stages[self.ls.stage]

  @property
  def out_of_steps(self) -> bool:
    return bool(self.tc.max_steps and self.step >= self.tc.max_steps)

  # -------------------------------------------------------------------- the loop
  def train(self):
    if distributed.is_primary():
      self.metrics_f = open(os.path.join(self.run.workdir, "metrics.jsonl"), "a")
      if self.tc.get("tensorboard", True):   # a resumed run hides the events after its step
        self.events = SummaryWriter(os.path.join(self.run.workdir, "tensorboard"),
                                    purge_step=self.step or None)
    try:
      with compile_listener(self.on_compile):
        if not (self.ls.done or (self.stage_ends() and self.last_stage())):
          self.compile_ahead()       # (a resumed run that already ended compiles nothing)
        self.train_stages()
    finally:
      if self.metrics_f is not None:
        self.metrics_f.close()
      if self.events is not None:
        self.events.close()
    self.ckpt.train.close()
    best = self.ckpt.best_tree()
    self.ckpt.best.close()
    if best is None:
      raise CheckpointError(f"{self.ckpt.best.directory}: no usable best checkpoint (every "
                            "one is damaged or missing): start over in a new --workdir")
    return best

  def train_stages(self) -> None:
    """Epochs of each stage in turn, until the last stage (or train.max_steps) ends."""
    while not self.ls.done:
      if self.stage_ends():
        if not self.last_stage():
          self.next_stage()
          continue
        self.ls.done = True
        break
      epoch = self.train_it.epoch
      self.train_epoch(self.stage.step(epoch - self.ls.stage_start), epoch)
      self.end_epoch(epoch)
      self.save()

  def stage_ends(self) -> bool:
    """The current stage has run its epochs, stopped early, or train.max_steps is spent."""
    return (self.train_it.epoch - self.ls.stage_start >= self.stage.epochs
            or self.ls.stage_over or self.out_of_steps)

  def last_stage(self) -> bool:
    """No stage follows the current one (or train.max_steps ends the run)."""
    return self.ls.stage + 1 >= len(self.plan.stages) or self.out_of_steps

  def on_compile(self, record: dict) -> None:
    """A program compiled: one log line and a metrics.jsonl record (not a TensorBoard one)."""
    self.log(f"compiled {record['program']} for {tuple(record['shape'])} in "
             f"{record['seconds']:.1f}s" + (" (from the persistent cache)" if record["from_cache"]
                                            else "") + ("" if record["ahead"] else " (on first use)"))
    self.write({"step": self.step, "compile": record["program"],
                **{k: record[k] for k in ("shape", "seconds", "ahead", "from_cache")}}, events=False)

  def compile_ahead(self) -> None:
    """Before the first step: the current stage's steps for every batch shape of the epoch
    (each step the stage's next epochs use), and the validation program for every
    validation shape. Whatever this misses (a later stage's steps, the test split's
    shapes) compiles on first use, reported the same way."""
    run, it, stage = self.run, self.train_it, self.stage
    first = it.epoch - self.ls.stage_start
    step_fns = [stage.step(e) for e in range(first, min(stage.epochs, first + 16))]
    for length in it.lengths():
      batch = run.shard(it.padding_batch(length))
      for fn in step_fns:
        if hasattr(fn, "compile"):
          fn.compile(self.state, batch, run.codes, self.key)
    valid_fn = run.loss_fn if self.select.by_loss else run.eval_fn
    if hasattr(valid_fn, "compile"):
      params = self.plan.rec_params(self.state)
      split, bs = run.splits["valid"], self.tc.eval_batch_size
      for length in eval_lengths(split, bs, run.buckets):
        batch = gather_batch(run.dataset, split, length, np.full(bs, -1)[run.rows(bs)])
        valid_fn.compile(params, run.shard(batch), *run.code_args)

  def next_stage(self) -> None:
    """Starts the next stage from the best checkpoint (early stopping restarts)."""
    ls = self.ls
    ls.stage += 1
    ls.stage_start, ls.stage_over = self.train_it.epoch, False
    best = self.ckpt.best_tree()
    self.state, codes = self.stage.begin(self.state, best, self.run)
    if codes is not None:
      set_codes(self.run, codes)
    ls.best, ls.bad_evals = None, 0
    self.log(f"stage {self.stage.name} begins at epoch {self.train_it.epoch} from the best "
             f"checkpoint{'' if best is not None else ' (none saved: from the current state)'}")
    self.save()

  def train_epoch(self, step_fn, epoch: int) -> None:
    """The epoch's steps (or the rest of it, after a resume), with periodic saves."""
    run, tc, it = self.run, self.tc, self.train_it
    primary = distributed.is_primary()
    t_epoch, samples, pending = time.time(), 0.0, None
    bar = tqdm(total=len(it), initial=it.get_state()["grain"].get("next_index", 0),
               desc=f"epoch {epoch + 1} ({self.stage.name})", leave=False, mininterval=1.0,
               disable=None if primary else True)

    def logger(pending, force=False):
      check_and_log(pending, write=self.write, bar=bar, tc=tc, plan=self.plan,
                    stage=self.stage.name, epoch=epoch, state=self.state, samples=samples,
                    t_epoch=t_epoch, force=force)

    for batch in it.epoch_batches():
      n_real = float(batch["weight_B"].sum()) * jax.process_count()  # (this process's rows)
      self.state, out = step_fn(self.state, run.shard(batch), run.codes, self.key)
      self.step += 1
      # Fetch the previous step's metrics only now, so the host never stalls the device.
      if pending is not None:
        logger(pending)
      pending = (self.step, out)
      samples += n_real
      self.ls.train_samples += n_real
      bar.update(1)
      if self.step % tc.save_every == 0:
        t_save = time.time()
        logger(pending)                    # before the save: a kill after it must not
        pending = None                     # lose this step's record
        self.save()
        t_epoch += time.time() - t_save    # checkpoint time is not training time
      if self.out_of_steps:
        break
    if pending is not None:
      logger(pending, force=True)
    bar.close()
    self.ls.train_seconds += time.time() - t_epoch

  def end_epoch(self, epoch: int) -> None:
    """The stage's after-epoch work, then a validation evaluation when one is due."""
    it, stage = self.train_it, self.stage
    epoch_done = it.epoch > epoch  # False only when max_steps cut the epoch short
    if epoch_done and stage.after_epoch is not None:
      codes, record = stage.after_epoch(self.state, epoch - self.ls.stage_start, self.run)
      if codes is not None:
        set_codes(self.run, codes)
      if record:
        self.write({"step": self.step, "epoch": epoch + 1, "stage": stage.name, **record})
        self.log(f"epoch {epoch + 1} ({stage.name}): {json.dumps(record)}")
    done = it.epoch - self.ls.stage_start
    finished = done >= stage.epochs or self.out_of_steps
    if (epoch_done and done % stage.eval_every == 0) or finished:
      self.evaluate(it.epoch if epoch_done else epoch + 1)

  def evaluate(self, epoch: int) -> None:
    """Validation, the best checkpoint and early stopping (train.select)."""
    ls, stage, select = self.ls, self.stage, self.select
    valid = select.evaluate(self.run, self.plan.rec_params(self.state))
    record = {"step": self.step, "epoch": epoch, "split": "valid", "stage": stage.name, **valid}
    self.write(record)
    ls.evals.append(record)
    self.log(f"epoch {epoch} step {self.step} ({stage.name}): valid {select.describe(valid)}")
    if select.better(valid, ls.best):
      ls.best = {"step": self.step, "epoch": epoch, "stage": stage.name,
                 select.key: valid[select.key]}
      ls.bad_evals = 0
      self.ckpt.save_best(self.step, self.state, epoch, ls.stage, stage.name)
    else:
      ls.bad_evals += 1
      if ls.bad_evals >= stage.patience:
        self.log(f"early stop ({stage.name}): no validation {select.gain} in "
                 f"{stage.patience} evaluations")
        ls.stage_over = True
