"""What the training loop runs: a method's `Plan`, a state (any pytree) and one or more
`Stage`s, each a schedule of jitted steps over the same batches with its own early
stopping (TIGER, LETTER, SimCIT, SASRec: one stage, one step; ETEGRec: alternating
tokenizer / recommender epochs that re-code the items on device, then fine-tuning from the
best checkpoint; SIIT: one stage whose epochs may end with a new code table).

Here too are the one AdamW set-up (train.* settings) and the one way a step is jitted.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Protocol

import jax
import jax.numpy as jnp

from jaxrec.optim import TrainState, optimizer_and_schedule
from jaxrec.training.run import Run
from jaxrec.xla import Program, compiler_options


class StepFn(Protocol):
  """One jitted step: the state is donated; `codes` is the run's current [N, C] table (None
  for models over item ids), `key` the run's training key (steps fold in their count). A
  step with a `compile` of the same arguments (`Program`, `Bound`) is compiled by the loop
  ahead of time for every batch shape."""
  def __call__(self, state: Any, batch: dict, codes: Optional[jax.Array], key: jax.Array
               ) -> tuple[Any, dict]: ...


class BeginFn(Protocol):
  """Starts a stage from the previous stage's best checkpoint (`best`, None when none was
  saved): (state, a new [N, C] code table on device, or None)."""
  def __call__(self, state: Any, best: Optional[dict], run: Run
               ) -> tuple[Any, Optional[jax.Array]]: ...


class AfterEpochFn(Protocol):
  """Runs after each epoch of a stage (`epoch` counted from the stage's start): (a new [N, C]
  code table on device for the loop to install, or None; a dict to log, or None). It may
  also install a table itself (`training.run.set_codes`) and return None."""
  def __call__(self, state: Any, epoch: int, run: Run
               ) -> tuple[Optional[jax.Array], Optional[dict]]: ...


class FinishFn(Protocol):
  """After the best checkpoint is restored: a dict added to results.json; its "ranks" entry,
  if any ({name: [n_users] ranks}, `target_ranks`), goes to ranks.npz instead."""
  def __call__(self, run: Run, best: dict) -> dict: ...


@dataclasses.dataclass
class Stage:
  """A run of epochs with its own early stopping. `step(epoch)` gives the jitted step for an
  epoch of the stage (counted from the stage's start); `begin` is set on every stage but the
  first."""
  name: str
  epochs: int
  step: Callable[[int], StepFn]
  eval_every: int
  patience: int
  begin: Optional[BeginFn] = None
  after_epoch: Optional[AfterEpochFn] = None


@dataclasses.dataclass
class Plan:
  """What the training loop runs."""
  state: Any                              # pytree; donated to the steps
  stages: list
  rec_params: Callable[[Any], Any]        # state -> the params that evaluate (run.eval_fn)
  best_extra: Callable[[Any], Any]        # state -> pytree saved beside them in best/ ({} none)
  global_step: Callable[[Any], int]       # state -> int steps taken
  lr_at: Optional[Callable[[Any, int], float]]  # (state, step) -> learning rate to log
                                          # (None: the steps return it as out["lr"])
  n_params: int
  n_trained: Optional[int] = None         # parameters that train, when not all (LoRA)
  dynamic_codes: bool = False             # the code table changes during training
  finish: Optional[FinishFn] = None


def total_steps(run: Run, steps_per_epoch: int) -> int:
  """train.epochs of steps, or train.max_steps when that is fewer."""
  tc = run.cfg.train
  total = tc.epochs * steps_per_epoch
  return min(total, tc.max_steps) if tc.max_steps else total


def adamw(run: Run, params, steps_per_epoch: int, trainable="model"):
  """AdamW with train.*'s schedule over `params`: (tx, lr_at(step), a TrainState replicated
  over the run's mesh). `trainable`: which parameters train (a function of the tree to
  bools, None: all); by default the run's model's rule (`steps.trainable`: LoRA)."""
  tc = run.cfg.train
  total = total_steps(run, steps_per_epoch)
  if trainable == "model":
    trainable = run.steps.trainable(run.model) if run.steps else None
  tx, lr_at = optimizer_and_schedule(tc.lr, tc.weight_decay, total, int(tc.warmup_frac * total),
                                     tc.clip, tc.schedule, tc.accumulate, tc.decay, tc.lr_end,
                                     trainable)
  state = run.place_state(TrainState(jnp.zeros((), jnp.int32), params, tx.init(params)))
  return tx, lr_at, state


def jit_step(run: Run, fn: Callable, name: str = "train", state=None) -> Program:
  """A train step compiled for the run's mesh: state donated, the new state placed as
  `state` is (`Run.state_sharding`: replicated, or split with train.shard_params), the
  outputs replicated; a `Program`, so the loop compiles it ahead of time for every batch
  shape."""
  out = run.replicated if state is None else (run.state_sharding(state), run.replicated)
  return Program(name, jax.jit(fn, donate_argnums=0, out_shardings=out,
                               compiler_options=compiler_options("train")))


class Bound:
  """A step `program(state, batch, codes, key, *extra)` as a `StepFn`, the extra arguments
  (loss weights, item features) bound; `compile` as the program's."""

  def __init__(self, program: Program, *extra):
    self.program, self.extra = program, extra

  def __call__(self, state, batch, codes, key):
    return self.program(state, batch, codes, key, *self.extra)

  def compile(self, state, batch, codes, key) -> float:
    return self.program.compile(state, batch, codes, key, *self.extra)


def n_params(tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))


def n_trained(params, mask) -> Optional[int]:
  """How many of `params` train under `mask` (`adamw`'s `trainable`); None when all do."""
  if mask is None:
    return None
  return sum(int(x.size) for x, t in zip(jax.tree.leaves(params), jax.tree.leaves(mask(params))) if t)


def single_stage_plan(run: Run, params, make_step: Callable, steps_per_epoch: int,
                      finish: Optional[FinishFn] = None) -> Plan:
  """One stage, one jitted step: AdamW (train.* settings) over `params`;
  `make_step(tx)` is the step `(state, batch, codes, key) -> (state, out)`."""
  tc = run.cfg.train
  tx, lr_at, state = adamw(run, params, steps_per_epoch)
  train_fn = jit_step(run, make_step(tx), state=state)
  stage = Stage("train", tc.epochs, lambda epoch: train_fn, tc.eval_every, tc.patience)
  return Plan(state, [stage], rec_params=lambda s: s.params, best_extra=lambda s: {},
              global_step=lambda s: int(s.step), lr_at=lambda s, step: float(lr_at(step)),
              n_params=n_params(params), n_trained=n_trained(params, run.steps.trainable(run.model) if run.steps else None),
              finish=finish)
