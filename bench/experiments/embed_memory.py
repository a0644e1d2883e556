"""Does `python -m jaxrec.embed` stream? Peak memory of the encoder over catalogues of growing
size: each size runs in a fresh process that encodes N texts into a memory-mapped output, as
`jaxrec.embed` does, and reports its peak resident memory (ru_maxrss) and items/s.

  JAXREC_DATA_DIR=../shared/data python -m bench.experiments.embed_memory --model PATH --sizes 2000 20000

Texts: the Scientific titles, cycled with the item's number appended so that every text is
distinct (about 25 tokens each). Held in memory by design: the texts themselves (the data set
has them) and one chunk of 64 batches of token ids; written to disk: the [N, E] output. If
the encoder held the catalogue as one batch, a 20,000-title catalogue would need about
20,000 x 32 x 1,536 x 4 B = 3.9 GB for one feed-forward activation alone.
Writes bench/results/embed-memory-<platform>.json, with the machine (device, CPU, jax / flax
versions).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

if not __package__:   # run as a file: the repository root, as `python -m` from it
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from bench import common  # noqa: E402

# One catalogue size, in a fresh process (PYTHONPATH: this checkout first).
CHILD = r"""
import json, resource, time
import numpy as np
from jaxrec.config import get_config
from jaxrec.data import load_dataset
from jaxrec.text.embedding import Encoder, item_texts
n, model, batch, out_path = {n}, {model!r}, {batch}, {out!r}
titles = item_texts(load_dataset(get_config("tiger", "scientific").data), ("title",))
texts = [f"{{titles[i % len(titles)]}} {{i}}" for i in range(n)]
enc = Encoder(model, batch)
rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float32, shape=(n, enc.dim))
t = time.perf_counter()
enc.encode(texts, out)
out.flush()
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
norms = np.linalg.norm(np.asarray(out), axis=1)
print(json.dumps({{"items": n, "seconds": round(seconds, 1), "items_per_s": round(n / seconds, 1),
                  "peak_rss_mb": round(peak / 1024), "buckets_compiled": enc._fn._cache_size(),
                  "rss_after_load_mb": round(rss_loaded / 1024),
                  "output_mb": round(n * enc.dim * 4 / 2**20, 1),
                  "unit_norm": bool(np.allclose(norms, 1, atol=1e-4))}}))
"""


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", required=True)
  p.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--out", default=None)
  args = p.parse_args()
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      [common.ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for n in args.sizes:
      code = CHILD.format(n=n, model=os.path.abspath(args.model), batch=args.batch,
                          out=os.path.join(tmp, f"out-{n}.npy"))
      done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
      if done.returncode:
        sys.exit(f"size {n} failed:\n{done.stderr[-3000:]}")
      row = json.loads(done.stdout.strip().splitlines()[-1])
      rows.append(row)
      print(f"{n:>8,} items: peak RSS {row['peak_rss_mb']:,} MB (after loading the model "
            f"{row['rss_after_load_mb']:,} MB; {row['buckets_compiled']} length buckets compiled), "
            f"output {row['output_mb']} MB (memory-mapped; its written pages count in RSS), "
            f"{row['items_per_s']} items/s", flush=True)
  out = common.result_path(f"embed-memory-{common.platform()}.json", args.out)
  common.write_json(out, {"model": os.path.abspath(args.model), "batch": args.batch, "rows": rows})
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
