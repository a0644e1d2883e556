"""ETEGRec's train step with and without `etegrec.short_rows` (the claims issue: runs made
affordable): the official recipe's i.i.d. batches are padded to their longest history, so
on a set of short histories most of a step is padding. Reports the padding of an epoch's
batches (mean padded length against the mean history) and, for one recommender step of a
given padded length (the same batch both ways), the seconds per step after compiling, the
compile seconds and the peak RSS, each way in a process of its own (the peak is the
process's).

  JAXREC_DATA_DIR=../shared/data python -m bench.experiments.etegrec_short_rows \\
      --variant scientific --length 30 --tokenizer_from WORKDIR

`--tokenizer_from` copies a run's pre-trained tokenizer (codes.npz/json, tokenizer.msgpack/
json) into a scratch workdir instead of pre-training one (the official recipe's 10,000
epochs); without it the tokenizer is pre-trained for `--tokenizer_epochs` (the step's cost
does not depend on the IDs' quality).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

if not __package__:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

TOKENIZER_FILES = ("codes.json", "codes.npz", "tokenizer.json", "tokenizer.msgpack")


def one_step(args, frac: float) -> dict:
  """In this process: set up the run (`short_rows=frac`), take the first batch of an epoch
  padded to `args.length`, time two recommender steps (the first compiles)."""
  from jaxrec.xla import set_cpu_devices
  set_cpu_devices()                             # the XLA:CPU devices jaxrec's commands use
  import jax
  from jaxrec import pipeline
  from jaxrec.config import get_config
  from jaxrec.data import BatchIterator
  from jaxrec.methods import etegrec

  cfg = get_config("etegrec", args.variant)
  cfg.etegrec.short_rows = frac
  cfg.tokenizer.epochs = cfg.tokenizer.epochs if args.tokenizer_from else args.tokenizer_epochs
  workdir = tempfile.mkdtemp(prefix="ete-short-")
  try:
    if args.tokenizer_from:
      for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(args.tokenizer_from, name), workdir)
    run = pipeline.setup(cfg, workdir, log=lambda m: None)
    it = BatchIterator(run.dataset, run.splits["train"], cfg.train.batch_size, run.buckets,
                       shuffle=True, seed=0, iid=cfg.data.batching == "iid")
    plan = etegrec.training_plan(run, jax.random.key(1), len(it))
    batch = next((b for b in it.epoch_batches() if b["history_BxL"].shape[1] == args.length),
                 None)
    if batch is None:
      raise SystemExit(f"no batch of the first epoch is padded to {args.length} items "
                       f"(buckets {run.buckets})")
    batch = run.shard(batch)
    step = plan.stages[0].step(cfg.etegrec.warm_epochs + 1)      # a recommender epoch, aligned
    state, times = plan.state, []
    for _ in range(2):
      t0 = time.time()
      state, out = step(state, batch, run.codes, jax.random.key(0))
      jax.block_until_ready(out["loss"])
      times.append(time.time() - t0)
    return {"short_rows": frac, "short": list(etegrec.short_part(run))[:2],
            "devices": int(run.mesh.devices.size),
            "length": args.length, "first_s": round(times[0], 2), "step_s": round(times[1], 2),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "loss": float(out["loss"])}
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


def padding(args) -> dict:
  """An epoch's i.i.d. batches: the mean length they are padded to and the mean history."""
  from jaxrec.config import get_config
  from jaxrec.data import leave_one_out, load_dataset, plan_batches
  cfg = get_config("etegrec", args.variant)
  ds = load_dataset(cfg.data)
  split = leave_one_out(ds, cfg.data.max_len)["train"]
  buckets = tuple(sorted(set(cfg.data.buckets) | {cfg.data.max_len}))
  group = cfg.train.accumulate if cfg.data.get("whole_updates", False) else 1
  plan = plan_batches(split, cfg.train.batch_size, buckets, True, 0, 0,
                      iid=cfg.data.batching == "iid", group=group)
  lens, padded = split.hist_len_S, [length for length, _ in plan]
  return {"samples": int(len(lens)), "mean_history": round(float(lens.mean()), 2),
          "p95_history": float(np.percentile(lens, 95)),
          "mean_padded_length": round(float(np.mean(padded)), 2),
          "batches_by_length": {int(k): int(v) for k, v in
                                zip(*np.unique(padded, return_counts=True))}}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--variant", default="scientific")
  p.add_argument("--length", type=int, default=30, help="the batch's padded history length")
  p.add_argument("--tokenizer_from", default="")
  p.add_argument("--tokenizer_epochs", type=int, default=50)
  p.add_argument("--short_rows", type=float, nargs="+", default=[0.0, 0.875])
  p.add_argument("--one", type=float, default=None, help=argparse.SUPPRESS)
  p.add_argument("--out", default=None)
  args = p.parse_args()
  if args.one is not None:                      # a child process: one way, one JSON line
    print(json.dumps(one_step(args, args.one)))
    return
  result = {"variant": args.variant, "padding": padding(args), "steps": []}
  print(json.dumps(result["padding"]))
  for frac in args.short_rows:
    cmd = [sys.executable, "-m", "bench.experiments.etegrec_short_rows", "--variant",
           args.variant, "--length", str(args.length), "--tokenizer_from", args.tokenizer_from,
           "--tokenizer_epochs", str(args.tokenizer_epochs), "--one", str(frac)]
    line = subprocess.run(cmd, check=True, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__))))).stdout.strip().splitlines()[-1]
    result["steps"].append(json.loads(line))
    print(line)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
