"""GFLOP/s of one product [M, K] x [K, N] under XLA:CPU's library paths and dtypes, stand-alone:
what the train step's dense dots could reach on this machine.

  python -m bench.experiments.dot_paths [M K N ...] [--reps 10]

Each shape runs as fp32, bf16 with a bf16 result, and bf16 with an fp32 result
(`preferred_element_type`, the form XLA:CPU hands to oneDNN / AMX where the CPU has it), each
compiled with jaxrec's training options (YNN dot fusions) and with XLA's defaults. Prints one
JSON line per case: median ms over --reps calls and GFLOP/s (2 M K N per product), after a
first line naming the machine (device, CPU, jax / flax versions).
"""
import argparse
import json
import os
import sys
import time

if not __package__:   # run as a file: the repository root, as `python -m` from it
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench import common  # noqa: E402

OPTIONS = {"ynn_dots": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}, "default": {}}
CASES = {"fp32": (jnp.float32, None), "bf16": (jnp.bfloat16, None), "bf16->fp32": (jnp.bfloat16, jnp.float32)}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("shape", type=int, nargs="*", default=[6400, 128, 1024, 6400, 1024, 128, 2048, 2048, 2048],
                 help="M K N triples (default: the feed-forward's two products at 25 tokens, and 2048^3)")
  p.add_argument("--reps", type=int, default=10)
  args = p.parse_args()
  if len(args.shape) % 3:
    p.error("shapes come as M K N triples")
  print(json.dumps({"machine": common.machine()}), flush=True)
  rng = np.random.default_rng(0)
  for m, k, n in zip(*[iter(args.shape)] * 3):
    a32, b32 = rng.random((m, k), np.float32), rng.random((k, n), np.float32)
    for options, compiler_options in OPTIONS.items():
      for case, (dtype, result) in CASES.items():
        a, b = jnp.asarray(a32, dtype), jnp.asarray(b32, dtype)
        fn = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=result), compiler_options=compiler_options)
        fn(a, b).block_until_ready()
        times = []
        for _ in range(args.reps):
          t = time.perf_counter()
          fn(a, b).block_until_ready()
          times.append(time.perf_counter() - t)
        s = float(np.median(times))
        print(json.dumps({"m": m, "k": k, "n": n, "case": case, "options": options,
                          "ms": round(1e3 * s, 2), "gflops": round(2 * m * k * n / s / 1e9, 1)}), flush=True)


if __name__ == "__main__":
  main()
