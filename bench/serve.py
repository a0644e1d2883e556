"""A bounded load test of `python -m jaxrec.serve` on localhost: a trained workdir is exported
(`jaxrec.export`), served by the command in a subprocess, and asked `--requests` requests by
1, 8 and 64 concurrent clients (threads, one keep-alive HTTP connection each): p50 / p99
latency and requests/s per level. Afterwards the server must still answer a fixed set of
requests as the exported model does in this process. Requests are the data set's own users'
histories, in keys.

  python -m bench.serve --workdir /work/runs/quality/tiger-scientific-paper-seed0 \
      --out bench/results/serve-cpu-tiger.json

(`python bench/serve.py` works too.) Writes JSON (the machine, the figures) to --out,
default bench/results/serve-<platform>.json.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

if not __package__:   # run as `python bench/serve.py`: the repository root, as `-m` from it
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def level(base: str, requests: list, clients: int) -> dict:
  """Every request once, by `clients` threads each with its own connection: latencies."""
  import httpx
  chunks = [requests[i::clients] for i in range(clients)]

  def client(chunk):
    out = []
    with httpx.Client(base_url=base, timeout=600) as c:
      for r in chunk:
        t = time.perf_counter()
        resp = c.post("/recommend", json=r)
        resp.raise_for_status()
        out.append(time.perf_counter() - t)
    return out

  t0 = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    lat = np.concatenate([np.asarray(x) for x in pool.map(client, chunks)])
  wall = time.perf_counter() - t0
  return {"clients": clients, "requests": len(requests), "seconds": round(wall, 2),
          "requests_per_s": round(len(requests) / wall, 1),
          "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 1),
          "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 1)}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="a trained run")
  p.add_argument("--requests", type=int, default=512, help="requests per concurrency level")
  p.add_argument("--clients", default="1,8,64")
  p.add_argument("--k", type=int, default=10)
  p.add_argument("--max_batch", type=int, default=64)
  p.add_argument("--max_wait_ms", type=float, default=5.0)
  p.add_argument("--out", default=None)
  args = p.parse_args()
  import httpx
  from jaxrec import export, pipeline, served
  run, _, _ = pipeline.load_run(args.workdir)
  ds, keys = run.dataset, pipeline.item_keys(run.dataset)
  requests = [{"user": str(u % ds.n_users), "history": [
      keys[i] for i in ds.items_I[ds.offsets_U1[u % ds.n_users]:ds.offsets_U1[u % ds.n_users + 1]]]}
      for u in range(args.requests)]
  folder = os.path.join(tempfile.mkdtemp(prefix="jaxrec-serve-bench-"), "export")
  t0 = time.time()
  export.export_run(args.workdir, folder)
  export_s = time.time() - t0
  port = free_port()
  base = f"http://127.0.0.1:{port}"
  log_path = os.path.join(os.path.dirname(folder), "server.log")   # (a pipe nobody reads
  server_log = open(log_path, "w")                                   # would fill and block it)
  server = subprocess.Popen(
      [sys.executable, "-m", "jaxrec.serve", f"--export={folder}", f"--port={port}",
       f"--k={args.k}", f"--max_batch={args.max_batch}", f"--max_wait_ms={args.max_wait_ms}",
       "--noaccess_log"],
      cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), stdout=server_log,
      stderr=subprocess.STDOUT, text=True)
  try:
    t0 = time.time()
    while True:                        # the server compiles every batch shape, then listens
      if server.poll() is not None:
        raise SystemExit(f"the server exited:\n{open(log_path).read()[-3000:]}")
      try:
        if httpx.get(base + "/healthz").status_code == 200:
          break
      except httpx.TransportError:
        time.sleep(0.5)
    ready_s = time.time() - t0
    levels = []
    for c in (int(x) for x in args.clients.split(",")):
      levels.append(level(base, requests, c))
      print(levels[-1], flush=True)
    health = httpx.get(base + "/healthz").json()
    check = requests[:32]
    want = served.load(folder, k=args.k).answer(check)
    with httpx.Client(base_url=base, timeout=600) as c:
      got = [c.post("/recommend", json=r).json() for r in check]
    same = all(g["items"] == w["items"] and np.allclose(g["scores"], w["scores"], atol=1e-5)
               for g, w in zip(got, want))
  finally:
    server.terminate()
    server.wait(30)
    server_log.close()
  result = {"workdir": args.workdir, "method": run.cfg.method, "dataset": ds.name,
            "n_items": ds.n_items, "k": args.k, "beam": run.cfg.train.get("beam"),
            "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
            "export_s": round(export_s, 1), "server_ready_s": round(ready_s, 1),
            "levels": levels, "device_batches": health["batches"],
            "answered": health["requests"], "correct_afterwards": bool(same)}
  print(f"{common.machine_line()}\n{result}")
  if not same:
    raise SystemExit("the server's answers after the load differ from the exported model's")
  common.write_json(common.result_path(f"serve-{common.platform()}.json", args.out), result)


if __name__ == "__main__":
  main()
