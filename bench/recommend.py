"""Throughput of `python -m jaxrec.recommend` on a trained workdir: users/s of its
`pipeline.recommender` (history keys in, JSON-ready lines out: the device batches and the host work
around them), after one warm-up batch that compiles; the data set's own users' histories.

  python -m bench.recommend --workdir workdir/tiger-default --users 3000 --out bench/results/recommend-cpu-tiger.json

(`python bench/recommend.py` works too.) Writes JSON (the machine, the figures) to --out,
default bench/results/recommend-<platform>.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

if not __package__:   # run as `python bench/recommend.py`: the repository root, as `-m` from it
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--users", type=int, default=3000)
  p.add_argument("--k", type=int, default=10)
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--out", default=None)
  common.add_cpu_devices(p)
  args = p.parse_args()
  common.set_cpu_devices(args)
  from jaxrec import pipeline
  run, _, _ = pipeline.load_run(args.workdir)
  rec = pipeline.recommender(args.workdir, args.k, False, args.batch)
  ds, keys = run.dataset, rec.keys
  users = [u % ds.n_users for u in range(args.users)]
  requests = [{"user": str(u), "history": [keys[i] for i in
                                           ds.items_I[ds.offsets_U1[u]:ds.offsets_U1[u + 1]]]}
              for u in users]
  t0 = time.time()
  rec.answer(requests[:args.batch])                       # compiles
  warm = time.time() - t0
  t0 = time.time()
  lines = 0
  for s in range(0, len(requests), args.batch):
    lines += len(rec.answer(requests[s:s + args.batch]))
  seconds = time.time() - t0
  result = {"workdir": args.workdir, "method": run.cfg.method, "users": lines, "k": args.k,
            "batch": args.batch, "beam": run.cfg.train.get("beam"),
            "first_batch_s": round(warm, 2), "seconds": round(seconds, 2),
            "users_per_s": round(lines / seconds, 1)}
  print(f"{common.machine_line()}\n{result}")
  common.write_json(common.result_path(f"recommend-{common.platform()}.json", args.out), result)


if __name__ == "__main__":
  main()
