"""Train state and optimizer shared by the tokenizer and the recommender."""
from __future__ import annotations

import flax
import jax
import optax


@flax.struct.dataclass
class TrainState:
  """step, params and optimizer state: a pytree, donated to the jitted steps."""
  step: jax.Array
  params: dict
  opt_state: optax.OptState


def learning_rate_schedule(lr: float, total_steps: int, warmup_steps: int,
                           schedule: str = "cosine", end_frac: float = 0.0) -> optax.Schedule:
  """Linear warm-up, then cosine or linear decay to `end_frac` x lr (0 by default), or
  constant. As HF's schedules (the official codes'), a warm-up longer than the run is not
  shortened: the rate is still rising when the run ends."""
  total_steps = max(int(total_steps), 1)
  warmup_steps = max(0, int(warmup_steps))
  if schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0 if warmup_steps else lr, lr, warmup_steps,
                                              max(total_steps, warmup_steps + 1),
                                              end_value=float(end_frac) * lr)
  if schedule == "linear":
    return optax.join_schedules(
        [optax.linear_schedule(0.0 if warmup_steps else lr, lr, warmup_steps),
         optax.linear_schedule(lr, float(end_frac) * lr, max(total_steps - warmup_steps, 1))],
        [warmup_steps])
  if schedule == "constant":
    if not warmup_steps:
      return optax.constant_schedule(lr)
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps),
                                 optax.constant_schedule(lr)], [warmup_steps])
  raise ValueError(f"schedule must be 'cosine', 'linear' or 'constant', got {schedule!r}")


def decay_mask(rule: str):
  """Which parameters weight decay reaches: "all", or "matrices": not the normalisation
  scales, biases and relative-attention bias tables (HF Trainer's rule: no decay for
  LayerNorm weights and for every parameter named `bias`, T5's relative_attention_bias
  included)."""
  if rule == "all":
    return None
  if rule != "matrices":
    raise ValueError(f"train.decay must be 'all' or 'matrices', got {rule!r}")

  def decayed(path, _):
    name = str(getattr(path[-1], "key", getattr(path[-1], "name", path[-1])))
    return not (name == "scale" or "bias" in name or name.endswith("_rel"))
  return lambda params: jax.tree_util.tree_map_with_path(decayed, params)


def optimizer_and_schedule(lr: float, weight_decay: float, total_steps: int, warmup_steps: int,
                           clip: float, schedule: str = "cosine", accumulate: int = 1,
                           decay: str = "all", end_frac: float = 0.0, trainable=None):
  """AdamW on the schedule above, after global-norm clipping (clip <= 0: none); returns
  (optimizer, schedule of the step) so that callers can log the learning rate of a step.
  `decay`: `decay_mask`'s rule; `end_frac`: where the cosine ends, as a fraction of lr.

  `accumulate` > 1: gradient accumulation (`optax.MultiSteps`): the gradients of that many
  consecutive steps are averaged, clipped and applied as one AdamW update on the last of
  them (the others leave the parameters as they are), as HF Trainer's
  `gradient_accumulation_steps`; `total_steps` and `warmup_steps` count steps (micro-batches),
  the schedule advances once per update.

  `trainable`: a function of the parameters to a tree of bools (LoRA); the others are
  frozen: no update, no weight decay, no optimizer state."""
  k = max(int(accumulate), 1)
  sched = learning_rate_schedule(lr, -(-int(total_steps) // k), int(warmup_steps) // k, schedule,
                                 end_frac)
  chain = [optax.clip_by_global_norm(clip)] if clip and clip > 0 else []
  tx = optax.chain(*chain, optax.adamw(sched, weight_decay=weight_decay, mask=decay_mask(decay)))
  if trainable is not None:
    tx = optax.multi_transform(
        {"train": tx, "frozen": optax.set_to_zero()},
        lambda params: jax.tree.map(lambda t: "train" if t else "frozen", trainable(params)))
  if k == 1:
    return tx, sched
  return optax.MultiSteps(tx, every_k_schedule=k).gradient_transformation(), lambda s: sched(s // k)


def make_optimizer(lr: float, weight_decay: float, total_steps: int, warmup_steps: int,
                   clip: float, schedule: str = "cosine") -> optax.GradientTransformation:
  """`optimizer_and_schedule` without the schedule."""
  return optimizer_and_schedule(lr, weight_decay, total_steps, warmup_steps, clip, schedule)[0]


def apply_step(state: TrainState, loss_fn, tx):
  """One optimizer step: `loss_fn(params) -> (loss, metrics)` differentiated at
  state.params, `tx` applied; returns (the next state, metrics with the gradient norm)."""
  (_, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  out["grad_norm"] = optax.tree.norm(grads)
  return TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state), out
