"""Interaction-log scale, by simulation: a generated log of N interactions written as Parquet
(in row groups, never whole in memory), then `python -m jaxrec.data prepare --format csv
--layout arrays` on it and the prepared set loaded into a `Dataset` (`load_dataset`, the
sequences memory-mapped), each in its own subprocess: seconds and peak RSS per step.

The log: `users` users with lengths from a geometric distribution (mean N / users), items
drawn from a Zipf law (exponent 0.8) over `items`, keys as strings ("u123", "i45"),
timestamps in seconds; rows in time order across users (a real dump's order), so each
batch the reader sees holds many users and items.

  python -m bench.log_scale --sizes 1000000 10000000 100000000 --out bench/results/log-scale-cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

if not __package__:   # run as `python bench/log_scale.py`: the repository root, as `-m` from it
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOAD = ("import sys, time, json, resource; t = time.time(); "
        "from jaxrec.data import readers; "
        "ds = readers.read_letter(sys.argv[1], 'Log'); n = int(ds.lengths_U.sum()); "
        "print(json.dumps({'users': ds.n_users, 'items': ds.n_items, 'interactions': n, "
        "'seconds': round(time.time() - t, 1)}))")


def write_log(path: str, n: int, users: int, items: int, seed: int = 0,
              chunk: int = 5_000_000) -> float:
  """Writes the log (see the module docstring); returns its size in MiB."""
  import pyarrow as pa
  import pyarrow.compute  # noqa: F401
  import pyarrow.parquet as pq
  rng = np.random.default_rng(seed)
  ranks = np.arange(1, items + 1, dtype=np.float64) ** -0.8
  cdf = np.cumsum(ranks / ranks.sum())
  schema = pa.schema([("user", pa.string()), ("item", pa.string()), ("timestamp", pa.int64())])
  t0 = 1_500_000_000
  with pq.ParquetWriter(path, schema) as w:
    for start in range(0, n, chunk):
      m = min(chunk, n - start)
      u = rng.integers(0, users, m)            # uniform over users: geometric-like lengths
      i = np.minimum(np.searchsorted(cdf, rng.random(m)), items - 1)
      ts = t0 + start + np.arange(m, dtype=np.int64)          # time order, as a dump
      keys = lambda prefix, ids: pa.compute.binary_join_element_wise(
          pa.scalar(prefix), pa.array(ids).cast(pa.string()), "")
      w.write_table(pa.table({"user": keys("u", u), "item": keys("i", i), "timestamp": ts},
                             schema=schema))
  return os.path.getsize(path) / 2 ** 20


# runs a command as its only child and prints the child's peak RSS (KiB) last: the peak of
# that one process (RUSAGE_CHILDREN of this script would be the largest of all its children)
PEAK = ("import json, resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print(json.dumps({'rc': r.returncode, "
        "'maxrss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")


def _run(args: list) -> dict:
  """A command's wall seconds, peak RSS (MiB) and standard output (without the last line)."""
  t = time.time()
  out = subprocess.run([sys.executable, "-c", PEAK] + args, cwd=REPO, capture_output=True,
                       text=True)
  lines = out.stdout.strip().splitlines()
  peak = json.loads(lines[-1])
  if peak["rc"]:
    raise SystemExit(f"{' '.join(args[:4])} failed:\n{out.stderr[-3000:]}")
  return {"seconds": round(time.time() - t, 1), "peak_rss_mib": round(peak["maxrss"] / 1024, 1),
          "stdout": "\n".join(lines[:-1])}


def one(n: int, users: int, items: int, workdir: str) -> dict:
  log = os.path.join(workdir, f"log-{n}.parquet")
  t = time.time()
  mib = write_log(log, n, users, items)
  row = {"interactions": n, "users": users, "items": items, "parquet_mib": round(mib, 1),
         "generate_s": round(time.time() - t, 1)}
  out = os.path.join(workdir, f"prepared-{n}")
  p = _run([sys.executable, "-m", "jaxrec.data", "prepare", "--format", "csv", "--interactions",
            log, "--out", out, "--name", "Log", "--layout", "arrays", "--core", "5"])
  row["prepare_s"], row["prepare_peak_rss_mib"] = p["seconds"], p["peak_rss_mib"]
  row["prepare_log"] = p["stdout"].strip().splitlines()
  os.remove(log)
  ld = _run([sys.executable, "-c", LOAD, out])
  loaded = json.loads(ld["stdout"].strip().splitlines()[-1])
  row["load_s"], row["load_peak_rss_mib"] = ld["seconds"], ld["peak_rss_mib"]
  row["kept"] = loaded
  row["prepare_bytes_per_interaction"] = round(row["prepare_peak_rss_mib"] * 2 ** 20 / n, 1)
  return row


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000, 100_000_000])
  p.add_argument("--mean_length", type=float, default=50.0, help="interactions per user")
  p.add_argument("--items", type=int, default=1_000_000)
  p.add_argument("--workdir", default=None, help="default: a temporary folder")
  p.add_argument("--out", default=None, help="default bench/results/log-scale-<platform>.json")
  a = p.parse_args()
  rows = []
  with tempfile.TemporaryDirectory(dir=a.workdir) as workdir:
    for n in sorted(a.sizes):
      row = one(n, max(int(n / a.mean_length), 1), a.items, workdir)
      print(json.dumps({k: v for k, v in row.items() if k != "prepare_log"}), flush=True)
      rows.append(row)
  result = {"machine": common.machine(), "rows": rows,
            "command": "python -m bench.log_scale " + " ".join(sys.argv[1:])}
  out = a.out or os.path.join(REPO, "bench", "results", f"log-scale-{common.platform()}.json")
  with open(out, "w") as f:
    json.dump(result, f, indent=1)
  print("wrote", out)


if __name__ == "__main__":
  main()
