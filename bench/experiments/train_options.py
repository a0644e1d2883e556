"""XLA compiler options for the T5 train step, compared bucket by bucket on one machine.

For every history bucket of one whole shuffled epoch (the TIGER preset on the real
Instruments lengths, as `bench/speed.py`), compiles the step once per option set, times the
sets alternately (paired: the machine's drift falls on all of them alike), prints each
bucket's median step per set, and the epoch's time under each set (each bucket's median
weighted by its batches), and under the best set per bucket.

  JAXREC_DATA_DIR=../shared/data python -m bench.experiments.train_options [--reps 3] \
      [--options '{"ynn_dot": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}, "none": {"xla_cpu_experimental_ynn_fusion_type": ""}}']

(the default compares jaxrec's training setting, YNN dot fusions, with no YNN fusions;
`python bench/experiments/train_options.py` works too). --out writes the figures as JSON with
the machine (device, CPU, jax / flax versions).
"""
import argparse
import collections
import functools
import json
import os
import sys
import time

if not __package__:   # run as a file: the repository root, as `python -m` from it
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench import common, speed  # noqa: E402
from jaxrec.data import gather_batch  # noqa: E402
from jaxrec.recommender import steps  # noqa: E402

DEFAULT = {"ynn_dot": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
           "none": {"xla_cpu_experimental_ynn_fusion_type": ""}}


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--options", type=json.loads, default=DEFAULT, help="{name: compiler options}")
  p.add_argument("--reps", type=int, default=3, help="timed steps per bucket and option set")
  p.add_argument("--batch", type=int, default=256)
  common.add_cpu_devices(p)
  p.add_argument("--out", default=None)
  args = p.parse_args()
  common.set_cpu_devices(args)
  cfg, ds, splits, source = speed.load_inputs(argparse.Namespace(buckets=None))
  codes_np = speed.random_codes(ds.n_items)
  model, tx, state, codes, buckets, plan, first_idx = speed.train_setup(cfg, ds, splits, codes_np,
                                                                        args.batch)
  fns = {name: jax.jit(functools.partial(steps.train_step, model=model, tx=tx), compiler_options=o)
         for name, o in args.options.items()}
  key = jax.random.key(1)
  count = collections.Counter(b for b, _ in plan)
  print(f"{common.machine_line()}; inputs {source}, batch {args.batch}, {len(plan)} batches",
        flush=True)
  step_s = {}
  for b in buckets:
    if b not in first_idx:
      continue
    batch = jax.device_put(gather_batch(ds, splits["train"], b, first_idx[b]), speed.placements()[1])
    compiled = {name: f.lower(state, batch, codes, key).compile() for name, f in fns.items()}
    for c in compiled.values():
      jax.block_until_ready(c(state, batch, codes, key))
    times = {name: [] for name in compiled}
    for _ in range(args.reps):
      for name, c in compiled.items():
        t = time.perf_counter()
        jax.block_until_ready(c(state, batch, codes, key))
        times[name].append(time.perf_counter() - t)
    step_s[b] = {name: float(np.median(v)) for name, v in times.items()}
    print(f"  bucket {b:>2} ({count[b]:>3} batches): " + ", ".join(
        f"{name} {1000 * s:,.0f} ms" for name, s in step_s[b].items()), flush=True)
  epoch = {name: sum(count[b] * s[name] for b, s in step_s.items()) for name in args.options}
  best = sum(count[b] * min(s.values()) for b, s in step_s.items())
  print("epoch: " + ", ".join(f"{name} {s:.1f} s" for name, s in epoch.items())
        + f"; the best set per bucket {best:.1f} s", flush=True)
  if args.out:
    common.write_json(args.out, {"options": args.options, "reps": args.reps,
                                 "batches": {str(b): count[b] for b in step_s},
                                 "step_ms": {str(b): {k: round(1000 * v, 1) for k, v in s.items()}
                                             for b, s in step_s.items()},
                                 "epoch_s": {k: round(v, 1) for k, v in epoch.items()},
                                 "best_per_bucket_s": round(best, 1)}, indent=1)


if __name__ == "__main__":
  main()
