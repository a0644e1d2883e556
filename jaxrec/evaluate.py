"""`python -m jaxrec.evaluate --workdir DIR`: restore a run's best checkpoint, decode the
validation and test users and print and write (DIR/eval.json) their metrics."""
import json
import os

from absl import flags

from jaxrec import cli, distributed
from jaxrec.checkpoint import write_atomic
from jaxrec.config import config_from_json
from jaxrec.pipeline import setup
from jaxrec.training.checkpointing import restore_best
from jaxrec.training.evaluation import evaluate_split, popularity_baseline
from jaxrec.training.run import set_codes

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by jaxrec.train.", required=True)
_SPLITS = flags.DEFINE_list("splits", ["valid", "test"], "Splits to evaluate.")
cli.define_distributed_flags()


def main(argv):
  del argv
  workdir = _WORKDIR.value
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    cli.fail(f"{path}: not found (is {workdir} a jaxrec.train workdir?)")
  with open(path) as f:
    cfg = config_from_json(f.read())
  run = setup(cfg, workdir, log=lambda m: None)
  restored = restore_best(run)
  if restored is None:
    best = os.path.join(workdir, "checkpoints", "best")
    saved = os.path.isdir(best) and any(n.isdigit() for n in os.listdir(best))
    cli.fail(f"{best}: " + ("every checkpoint is damaged (see the warnings above); train again "
                            "in a new workdir: python -m jaxrec.train --workdir NEW_DIR"
                            if saved else "no usable checkpoint (train first: python -m "
                            f"jaxrec.train --workdir {workdir})"))
  if "codes" in restored[1]:             # the IDs the checkpoint was trained with
    set_codes(run, restored[1]["codes"])
  out = {"step": restored[0]}
  for split in _SPLITS.value:
    out[split] = evaluate_split(run, restored[1]["params"], split)
  out["popularity"] = popularity_baseline(run)
  if not distributed.is_primary():     # a multi-process run: process 0 prints and writes
    return
  for split in _SPLITS.value:
    m = out[split]
    print(f"{split}: " + ", ".join(f"{k} {m[k]:.4f}" for k in sorted(m) if "@" in k) +
          f" ({m['users']} users, {m['decode_s']}s)")
  write_atomic(os.path.join(workdir, "eval.json"), json.dumps(out, indent=2))


if __name__ == "__main__":
  cli.run(main)
