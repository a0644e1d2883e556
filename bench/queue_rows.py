"""The claims queue's question about a row before it starts one (bench/claims_queue.sh):

  python -m bench.queue_rows OUT.json SPEC FIRST END --tables GLOB [--left S] [--slower F]
      [--workdir DIR --name NAME]

exits 0 when seeds FIRST..END-1 of SPEC should run now, 1 when OUT.json already holds them
all, 2 when they would not finish within --left seconds (the time this machine has left: a
machine and its workdirs may not outlive the session, and a row cut off starts from nothing
on the next one, so the lane goes on to a row that fits). A row one of whose missing seeds
has a checkpoint in its workdir under DIR (bench.quality's `--workdir` and `--name`) runs
whatever time is left: this machine kept that workdir from an earlier session, so what the
row trains now is kept as well, and it resumes where it stops. A seed's time is the longest
`train_seconds_per_seed` among the tables (GLOB) of the same spec, failing that of the same
method and variant, failing that of the same method, times OVERHEAD (the tokenizer's cache,
the final decodes: LETTER's seed 2 on Scientific, 4,765 s of wall for 4,178 of training) and
--slower (this machine against the ones the tables were made on). A row no table has timed
always runs.
"""
import argparse
import glob
import json
import os
import sys

from bench.quality import run_tag

OVERHEAD = 1.15


def seeds_done(path):
  try:
    with open(path) as f:
      return set(json.load(f)["rows"][0]["seeds"])
  except (OSError, ValueError, KeyError, IndexError):
    return set()


def seed_seconds(spec, tables):
  """The longest training time of one seed of `spec` in `tables`, else of a row of the same
  method and variant, else of the same method, times OVERHEAD; None when no table has one."""
  head = spec.partition(",")[0]     # method:variant (the overrides follow, comma-separated)
  keys = (lambda run: run == spec, lambda run: run.partition(",")[0] == head,
          lambda run: run.partition(":")[0] == head.partition(":")[0])
  times = [[] for _ in keys]
  for path in sorted(tables):
    with open(path) as f:
      for row in json.load(f).get("rows", []):
        tier = next((i for i, key in enumerate(keys) if key(row.get("run", ""))), None)
        if tier is not None:
          times[tier] += row.get("train_seconds_per_seed") or []
  best = next((t for t in times if t), None)
  return max(best) * OVERHEAD if best else None


def resumable(workdir):
  """Whether a run's workdir holds a checkpoint to resume from (any stage's)."""
  return any(os.path.basename(step).isdigit()
             for step in glob.glob(os.path.join(glob.escape(workdir), "checkpoints", "*", "*")))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("out")
  p.add_argument("spec")
  p.add_argument("first", type=int)
  p.add_argument("end", type=int)
  p.add_argument("--tables", required=True, help="glob of the tables whose times estimate a seed's")
  p.add_argument("--left", type=float, help="seconds this machine has left (default: no limit)")
  p.add_argument("--slower", type=float, default=1.0)
  p.add_argument("--workdir", help="where bench.quality keeps the row's workdirs")
  p.add_argument("--name", default="", help="bench.quality's --name (in the workdirs' names)")
  a = p.parse_args(argv)
  missing = sorted(set(range(a.first, a.end)) - seeds_done(a.out))
  if not missing:
    print(f"in {a.out}")
    return 1
  kept = [s for s in missing
          if a.workdir and resumable(os.path.join(a.workdir, run_tag(a.spec, a.name, s)))]
  if kept:
    print(f"seeds {kept} resume from their checkpoints")
    return 0
  each = seed_seconds(a.spec, glob.glob(a.tables))
  if a.left is None or each is None:
    return 0
  need = each * a.slower * len(missing)
  if need > a.left:
    print(f"about {need:,.0f} s for seeds {missing} ({each * a.slower:,.0f} a seed), "
          f"{a.left:,.0f} s left")
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
