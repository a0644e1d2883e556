"""A run that early stopping ended, given more patience: a copy of the workdir whose
config.json has the larger `train.patience`, its results.json removed, so that training the
copy (`python -m jaxrec.train --workdir DST` with the same config and that patience, or the
`bench/quality.py` row of that spec) resumes at the evaluation where the source stopped and
goes on exactly as a run with that patience from the start would have (the run's curve and
state up to the stop are the same; `tests/test_bench.py` checks the copy against such a
run). The source is read, never written.

Built for the claims queue's patience (bench/README.md, early stopping's patience): the
rows that stopped at 5 evaluations without a gain go on to 15 without rerunning their epochs:

  python -m bench.experiments.more_patience /work/runs/quality/tiger-scientific-paper-seed2 \\
      /work/runs/quality/tiger-scientific-paper-train.patience_15-seed2 --patience 15
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

if not __package__:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from jaxrec.checkpoint import write_atomic  # noqa: E402
from jaxrec.config import config_from_json, config_to_json  # noqa: E402
from jaxrec.pipeline import resumed_loop, setup  # noqa: E402


def more_patience_copy(src: str, dst: str, patience: int, log=print) -> dict:
  """Copies `src` to `dst` (which must not exist) with train.patience = `patience`; returns
  where the copy resumes ({"step", "epoch", "bad_evals"}). Refuses (and leaves no `dst`) a
  run that did not stop early on train.patience (its epochs ran out, or its last stage has
  a patience of its own, as ETEGRec's fine-tuning) or that would stop at the same
  evaluation again."""
  if os.path.exists(dst):
    raise SystemExit(f"{dst}: exists; name a new folder")
  with open(os.path.join(src, "config.json")) as f:
    cfg = config_from_json(f.read())
  cfg.train.patience = patience
  shutil.copytree(src, dst)
  try:
    write_atomic(os.path.join(dst, "config.json"), config_to_json(cfg))
    if os.path.exists(os.path.join(dst, "results.json")):
      os.remove(os.path.join(dst, "results.json"))      # (else read as the run's result)
    loop = resumed_loop(setup(cfg, dst, log=log), log=log)
    loop.ckpt.close()
    if loop.stage_ends():              # (its epochs spent, or still stopped early)
      raise SystemExit(
          f"{src}: its stage {loop.stage.name} is over at epoch {loop.train_it.epoch} with "
          f"{loop.ls.bad_evals} evaluations without a gain and patience {loop.stage.patience}: "
          f"train.patience {patience} does not reopen it")
  except BaseException:
    shutil.rmtree(dst, ignore_errors=True)
    raise
  where = {"step": loop.step, "epoch": loop.train_it.epoch, "bad_evals": loop.ls.bad_evals}
  log(f"{dst}: resumes at {json.dumps(where)} with patience {patience}")
  return where


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("src", help="a jaxrec.train workdir that early stopping ended")
  p.add_argument("dst", help="the copy to write (a new folder)")
  p.add_argument("--patience", type=int, required=True,
                 help="evaluations without a gain before the copy stops")
  a = p.parse_args()
  more_patience_copy(a.src, a.dst, a.patience)


if __name__ == "__main__":
  main()
