"""`python -m jaxrec.evaluate --workdir DIR`: restore a run's best checkpoint, decode the
validation and test users and print and write (DIR/eval.json) their metrics.
`--predictions out.jsonl`: each evaluated user's ranked items, in the data set's keys,
one line per user ({"split", "user", "target", "items", "rank"}: the target's 1-based rank
among the items, null when absent), to audit hits item by item. `--beam 100`: rank 100
items per user (a generative run's beam; SASRec's top-k) to add recall@50 / @100 and
ndcg@50 / @100 (SimCIT's paper reports recall at large K). `--loss`: each split's
teacher-forced loss beside its metrics (what `train.select='loss'` selects by on
validation; a generative run's only)."""
import json
import os

from absl import flags

from jaxrec import cli, distributed
from jaxrec.checkpoint import write_atomic
from jaxrec.methods import get_method
from jaxrec.pipeline import item_keys, load_run
from jaxrec.training.evaluation import evaluate_split, popularity_baseline, split_loss

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by jaxrec.train.", required=True)
_SPLITS = flags.DEFINE_list("splits", ["valid", "test"], "Splits to evaluate.")
_PREDICTIONS = flags.DEFINE_string("predictions", "", "Write each user's ranked items here "
                                   "(JSON lines, the data set's keys).")
_BEAM = flags.DEFINE_integer("beam", 0, "Rank this many items per user (the generative runs' "
                             "beam; SASRec's top-k) instead of the run's (train.beam; 20): "
                             "100 adds recall@50 / @100 and ndcg@50 / @100.", lower_bound=0)
_LOSS = flags.DEFINE_bool("loss", False, "Also each split's teacher-forced loss (a generative "
                          "run's: what train.select='loss' selects by on validation).")
cli.define_distributed_flags()


def prediction_writer(run, split: str, out):
  """`evaluate_split`'s on_batch: one line per real user of the batch."""
  keys = item_keys(run.dataset)
  users = run.dataset.user_keys

  def write(batch, items):
    for row in range(len(batch["weight_B"])):
      if batch["weight_B"][row] <= 0:
        continue
      target, ranked = int(batch["target_B"][row]), [int(i) for i in items[row] if i >= 0]
      u = int(batch["user_B"][row])
      out.write(json.dumps({
          "split": split, "user": str(users[u]) if users is not None else str(u),
          "target": keys[target], "items": [keys[i] for i in ranked],
          "rank": ranked.index(target) + 1 if target in ranked else None}) + "\n")
  return write


def main(argv):
  del argv
  workdir = _WORKDIR.value
  if _PREDICTIONS.value and distributed.multi_process():
    cli.fail("--predictions: one process only (a multi-process run evaluates without it)")
  run, params, step = load_run(workdir)
  if _LOSS.value and run.loss_fn is None:
    cli.fail(f"--loss: {workdir}: a {run.cfg.method} run has no teacher-forced loss over codes")
  out = {"step": step}
  eval_fn = None
  if _BEAM.value:
    eval_fn = get_method(run.cfg.method).eval_fn(run, _BEAM.value)
    out["beam"] = _BEAM.value
  predictions = open(_PREDICTIONS.value, "w") if _PREDICTIONS.value else None
  for split in _SPLITS.value:
    hook = prediction_writer(run, split, predictions) if predictions else None
    out[split] = evaluate_split(run, params, split, on_batch=hook, eval_fn=eval_fn)
    if _LOSS.value:
      out[split]["loss"] = split_loss(run, params, split)
  if predictions:
    predictions.close()
  out["popularity"] = popularity_baseline(run)
  if not distributed.is_primary():     # a multi-process run: process 0 prints and writes
    return
  for split in _SPLITS.value:
    m = out[split]
    shown = [k for k in sorted(m) if "@" in k or k == "loss"]
    print(f"{split}: " + ", ".join(f"{k} {m[k]:.4f}" for k in shown) +
          f" ({m['users']} users, {m['decode_s']}s)")
  write_atomic(os.path.join(workdir, "eval.json"), json.dumps(out, indent=2))


if __name__ == "__main__":
  cli.run(main)
