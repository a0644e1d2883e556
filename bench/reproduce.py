"""The reproduction queue: each method's `paper` variant (the official code's protocol,
docs/protocols.md) trained to convergence on Instruments, one results table with device,
time and seeds per row, beside the published numbers.

  JAXREC_DATA_DIR=../shared/data python -m bench.reproduce               # the whole queue
  JAXREC_DATA_DIR=../shared/data python -m bench.reproduce --epochs 1 --max-steps 20  # a check

(`python bench/reproduce.py` works too.) It runs on whatever device JAX finds (a GPU or TPU
when one is there) and is resumable: every row trains in its own workdir under --workdir
through `bench/quality.py`'s runner (a finished run is reused, an interrupted one resumes
from its last checkpoint), and the table (and a JSON with the machine: device, CPU, jax /
flax versions) is rewritten after every row, so a killed queue loses at most the row in
progress. A budget
(`--epochs`: a cap on the tokenizer's, the recommender's and the derived SASRec's epochs;
`--max-steps`: on the recommender's steps) makes the rows budget runs, named so in the
table and in their workdirs; without one, every row runs its variant's full schedule.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

if not __package__:   # run as `python bench/reproduce.py`: the repository root, as `-m` from it
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common, quality  # noqa: E402

QUEUE = (
    "tiger:letter_ids_paper",      # the recommender and decoder on LETTER's published IDs
    "letter:instruments_paper",    # LETTER's tokenizer, then the same recommender
    "etegrec:instruments_paper",   # ETEGRec end to end (SASRec 256-d features derived in-run)
    "simcit:instruments_paper",    # SimCIT's released tokenizer setting, TIGER's recommender
)


def budget_overrides(cfg_method: str, variant: str, epochs: int, max_steps: int) -> list:
  """The `key=value` overrides that cap a row's schedule (none without a budget)."""
  from jaxrec.config import get_config
  cfg = get_config(cfg_method, variant)
  out = []
  if epochs:
    out.append(("train.epochs", min(cfg.train.epochs, epochs)))
    out.append(("cf.train.epochs", min(cfg.cf.train.epochs, epochs)))
    if cfg.tokenizer.source in ("rqvae", "simcit"):
      out.append(("tokenizer.epochs", min(cfg.tokenizer.epochs, epochs)))
      out.append(("tokenizer.save_every", 0))
    if "etegrec" in cfg:
      out.append(("etegrec.finetune_epochs", min(cfg.etegrec.finetune_epochs, epochs)))
  if max_steps:
    out.append(("train.max_steps", max_steps))
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("runs", nargs="*", default=list(QUEUE), help="default: the whole queue")
  p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per row (mean +- std)")
  p.add_argument("--epochs", type=int, default=0, help="budget: cap on every schedule's epochs")
  p.add_argument("--max-steps", type=int, default=0, help="budget: cap on recommender steps")
  p.add_argument("--workdir", default="runs/reproduce")
  p.add_argument("--out", default=None,
                 help="output stem (default bench/results/reproduce-<platform>[-budget])")
  common.add_cpu_devices(p)
  args = p.parse_args()
  common.set_cpu_devices(args)
  budget = "" if not (args.epochs or args.max_steps) else (
      f"budget-e{args.epochs}" + (f"-s{args.max_steps}" if args.max_steps else ""))
  stem = common.result_path(f"reproduce-{common.platform()}" + (f"-{budget}" if budget else ""),
                            args.out)
  rows, failed = [], []
  for spec in args.runs:
    head = quality.split_spec(spec)[0]
    method, _, variant = head.partition(":")
    caps = budget_overrides(method, variant, args.epochs, args.max_steps)
    t0 = time.time()
    try:
      seeds = [quality.run_one(spec, caps, args.workdir, budget, seed)
               for seed in range(args.seeds)]
    except Exception as e:  # noqa: BLE001  (a failed row is reported; the queue goes on)
      failed.append({"run": spec, "error": f"{type(e).__name__}: {e}".splitlines()[0]})
      print(f"[{spec}] failed: {failed[-1]['error']}", flush=True)
    else:
      row = quality.aggregate(seeds)
      row["queue_seconds_this_invocation"] = round(time.time() - t0, 1)
      rows.append(row)
    md = (quality.table(rows) if rows else "(no row finished)") + "".join(
        f"\n\nfailed: `{r['run']}`: {r['error']}" for r in failed)
    common.write_json(stem + ".json", {"budget": budget or "full", "rows": rows, "failed": failed})
    with open(stem + ".md", "w") as f:
      f.write(md + "\n")
    print(md, flush=True)
  print(f"wrote {stem}.md and {stem}.json")


if __name__ == "__main__":
  main()
