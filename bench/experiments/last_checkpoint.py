"""A run as it stood when it stopped, beside the checkpoint early stopping chose: a copy of
a finished workdir whose best/ holds the recommender of its newest train/ checkpoint (the
source is read, never written), so that every tool that reads a run's best checkpoint
(`jaxrec.evaluate`, `bench/experiments/gap_by_group.py`) reads the last one instead.

Built to ask whether the lists of TIGER's seed 1 are popular because its best epoch came
early (bench/README.md, the comparator seed):

  JAXREC_DATA_DIR=../shared/data python -m bench.experiments.last_checkpoint \\
      /work/runs/quality/tiger-scientific-paper-seed1 /work/runs/last/tiger-seed1
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

if not __package__:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from jaxrec.config import config_from_json  # noqa: E402
from jaxrec.pipeline import resumed_loop, setup  # noqa: E402
from jaxrec.training.checkpointing import RunCheckpoints  # noqa: E402


def last_checkpoint_copy(src: str, dst: str, log=print) -> int:
  """Copies `src` to `dst` (which must not exist) and makes the newest train/ checkpoint's
  recommender the copy's best; returns its step."""
  if os.path.exists(dst):
    raise SystemExit(f"{dst}: exists; name a new folder")
  shutil.copytree(src, dst)
  with open(os.path.join(dst, "config.json")) as f:
    cfg = config_from_json(f.read())
  run = setup(cfg, dst, log=log)
  loop = resumed_loop(run, log=log)        # the newest intact train/ checkpoint
  loop.ckpt.close()
  best = os.path.join(dst, "checkpoints", "best")
  shutil.rmtree(best)                      # (the copy's: a save never replaces a newer step)
  ckpt = RunCheckpoints(run, loop.plan)
  stage = loop.ls.stage          # (a method's codes at that step were installed by the resume)
  ckpt.save_best(loop.step, loop.state, loop.train_it.epoch, stage, loop.plan.stages[stage].name)
  ckpt.close()
  log(f"{dst}: best/ now holds step {loop.step} (epoch {loop.train_it.epoch})")
  return loop.step


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("src", help="a finished jaxrec.train workdir")
  p.add_argument("dst", help="the copy to write (a new folder)")
  a = p.parse_args()
  last_checkpoint_copy(a.src, a.dst)


if __name__ == "__main__":
  main()
