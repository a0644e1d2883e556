"""Catalogue scale, by simulation: synthetic catalogues of 100k to 10M items (the built-in
generator, `data.synthetic.n_items`, with 1,024 subtopics and its content feature at 32-d:
the Instruments width) through the tokenizer and the constrained decoder, one subprocess
per size (its peak RSS is the size's):

- the RQ-VAE fit (configs/tiger.py:instruments' tokenizer: 32 -> 512 -> 256 -> 128 -> 3 x 256
  codes): k-means initialisation on the whole catalogue, training steps (items/s,
  compilation excluded; an epoch's time extrapolated), the catalogue's assignment, the
  collision level (sized to the largest group the briefly trained tokenizer leaves);
- the code table's and the prefix tables' bytes per item, and constrained decoding at beam
  20, both on uniform random 3 x 256 IDs plus the collision level (what the decoder costs
  at the size; the briefly trained tokenizer's IDs are reported, not decoded), the decoder
  configs/tiger.py:instruments' T5 with random weights, batch 256, history bucket 8:
  users/s, compilation excluded;
- SASRec's sampled-softmax train step (configs/sasrec.py:instruments, 256 negatives) at
  `--sasrec_items`: samples/s and step time.

  python -m bench.scale --sizes 100000 1000000 10000000 --out bench/results/scale-cpu.json

(`python bench/scale.py` works too.) Writes JSON (the machine, one row per size) and, with
matplotlib, a plot beside it (catalogue size against decode users/s and bytes per item).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

if not __package__:   # run as `python bench/scale.py`: the repository root, as `-m` from it
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _peak_rss_mib() -> float:
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn, *args, **static):
  """(result, seconds) of a call of the jitted `fn`, compilation excluded: it is lowered
  (with its `static` arguments) and compiled first."""
  import jax
  exe = fn.lower(*args, **static).compile()
  t = time.perf_counter()
  out = jax.block_until_ready(exe(*args))
  return out, time.perf_counter() - t


def catalogue(n_items: int, n_users: int, decode_batch: int, decode_reps: int,
              tokenizer_steps: int) -> dict:
  """One catalogue size, end to end (run in its own process)."""
  import functools

  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxrec import decode
  from jaxrec.config import get_config
  from jaxrec.data import gather_batch, leave_one_out
  from jaxrec.data.synthetic import SyntheticSpec, generate
  from jaxrec.distributed import per_device_eval
  from jaxrec.optim import TrainState, make_optimizer
  from jaxrec.recommender import steps
  from jaxrec.recommender.t5 import T5
  from jaxrec.recommender.t5_layers import model_config
  from jaxrec.tokenizer import build
  from jaxrec.tokenizer import codes as codes_lib
  from jaxrec.tokenizer import train as tok_train
  from jaxrec.tokenizer.rqvae import RQVAE, rqvae_config
  from jaxrec.xla import jit_init
  from jax.sharding import Mesh

  from bench.speed import random_codes

  row = {"items": n_items}
  cfg = get_config("tiger", "instruments")
  t = time.perf_counter()
  # 1,024 subtopics, and the 32-d content feature (subtopic centre + noise): spread enough
  # for 3 x 256 codes (the default 48 subtopics' tight `cf` clusters collapse at 1M items)
  ds, _ = generate(SyntheticSpec(n_items=n_items, n_users=n_users, n_topics=32, n_subtopics=32,
                                 content_dim=32))
  row["generate_s"] = round(time.perf_counter() - t, 1)
  feats = jnp.asarray(ds.features["content"], jnp.float32)
  tc = cfg.tokenizer
  model = RQVAE(rqvae_config(tc, feats.shape[1]))
  key = jax.random.key(0)
  params = jit_init(model, {"params": key}, feats[:2], train=False)
  init = jax.jit(functools.partial(tok_train.kmeans_init, model=model, iters=tc.kmeans_iters,
                                   init=tc.kmeans_method))
  params, dt = _timed(init, params, feats, key)
  row["kmeans_init_s"] = round(dt, 2)
  tx = make_optimizer(tc.lr, tc.weight_decay, 10, 0, tc.clip, tc.schedule)
  state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  idx = tok_train.epoch_batches(key, n_items, tc.batch_size)[:tokenizer_steps]
  (state, _), dt = _timed(tok_train.train_epoch, state, feats, idx, key, model=model, tx=tx)
  row["tokenizer_steps"] = int(idx.shape[0])
  row["tokenizer_items_per_s"] = round(idx.size / dt)
  row["tokenizer_epoch_s"] = round(n_items / (idx.size / dt), 1)   # an epoch: identical steps
  enc, dt = _timed(tok_train.encode_catalogue, state.params, feats, model=model)
  row["encode_catalogue_s"] = round(dt, 2)
  t = time.perf_counter()
  last = tc.levels - 1
  largest = codes_lib.health_dict(np.asarray(enc["codes_NxC"]),
                                  (tc.codebook_size,) * tc.levels)["largest_group"]
  tc.suffix_size = max(tc.suffix_size, largest)      # one epoch of fitting: wide groups
  table = build.assign_catalogue(tc, enc["codes_NxC"], enc["residuals_NxCxD"][:, last],
                                 state.params["params"]["codebooks"][last], "scale", {})
  row["collision_level_s"] = round(time.perf_counter() - t, 2)
  row["fitted_distinct_ids"] = int(table.stats["before_resolution"]["distinct_ids"])
  row["fitted_largest_group"] = int(largest)
  # Decoding is measured on uniform random 3 x 256 IDs plus the collision level (as
  # bench/speed.py's grid): what the decoder costs at this catalogue size, not what a
  # tokenizer trained for 200 steps leaves (its groups are thousands wide)
  codes = random_codes(n_items)
  row["levels"], row["collision_level_size"] = int(codes.shape[1]), int(codes[:, -1].max()) + 1
  t = time.perf_counter()
  tables = jax.block_until_ready(decode.prefix_tables(codes))
  row["prefix_tables_s"] = round(time.perf_counter() - t, 2)
  row["code_table_bytes_per_item"] = round(codes.nbytes / n_items, 2)
  row["prefix_tables_bytes_per_item"] = round(
      sum(x.nbytes for x in jax.tree.leaves(tables)) / n_items, 2)
  # constrained decoding with the fitted catalogue
  t5 = T5(model_config(cfg.model, (256,) * codes.shape[1], "float32"))
  splits = leave_one_out(ds, cfg.data.max_len)
  batch = gather_batch(ds, splits["test"], 8, np.arange(decode_batch) % len(splits["test"]))
  codes_dev = jnp.asarray(codes)
  tok, mask = steps.history_tokens(codes_dev, batch["history_BxL"], batch["mask_BxL"], t5.cfg)
  dec_in, _ = steps.decoder_io(codes_dev, batch["target_B"], t5.cfg)
  t5_params = jit_init(t5, key, tok, mask, batch["user_B"], dec_in)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  fn = per_device_eval(functools.partial(steps.eval_step, model=t5, beam=20), mesh)
  fn.compile(t5_params, batch, codes_dev, tables)
  jax.block_until_ready(fn(t5_params, batch, codes_dev, tables))
  t = time.perf_counter()
  for _ in range(decode_reps):
    jax.device_get(fn(t5_params, batch, codes_dev, tables)[0])
  dt = (time.perf_counter() - t) / decode_reps
  row["decode_users_per_s"] = round(decode_batch / dt, 1)
  row["decode_batch"], row["beam"], row["history"] = decode_batch, 20, 8
  row["peak_rss_mib"] = round(_peak_rss_mib())
  return row


def sasrec_step(n_items: int, batch: int, steps_timed: int) -> dict:
  """SASRec's sampled-softmax train step over a catalogue of `n_items` (random histories)."""
  import functools

  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxrec.config import get_config
  from jaxrec.optim import TrainState, make_optimizer
  from jaxrec.recommender import sasrec

  scfg = get_config("sasrec", "instruments")
  length = scfg.data.max_len
  model = sasrec.SASRec(sasrec.model_config(scfg.model, n_items, length))
  rng = np.random.default_rng(0)
  lens = rng.integers(2, length + 1, batch)
  mask = np.arange(length)[None] < lens[:, None]
  hist = np.where(mask, rng.integers(1, n_items, (batch, length)), 0).astype(np.int32)
  b = {"history_BxL": hist, "mask_BxL": mask,
       "target_B": rng.integers(1, n_items, batch).astype(np.int32),
       "user_B": np.zeros(batch, np.int32), "weight_B": np.ones(batch, np.float32)}
  params = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), hist[:2],
                                                                mask[:2])
  tx = make_optimizer(scfg.train.lr, 0.0, 10_000, 0, 0.0, "constant")
  state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  fn = jax.jit(functools.partial(sasrec.train_step, model=model, tx=tx, loss="sampled",
                                 negatives=scfg.model.negatives), donate_argnums=0)
  key = jax.random.key(1)
  t = time.perf_counter()
  exe = fn.lower(state, b, key).compile()
  compile_s = time.perf_counter() - t
  state, out = exe(state, b, key)
  jax.block_until_ready(out)
  t = time.perf_counter()
  for _ in range(steps_timed):
    state, out = exe(state, b, key)
  jax.block_until_ready(out)
  dt = (time.perf_counter() - t) / steps_timed
  return {"items": n_items, "batch": batch, "negatives": scfg.model.negatives,
          "d": scfg.model.d, "step_ms": round(1000 * dt, 1),
          "windows_per_s": round(batch / dt, 1), "compile_s": round(compile_s, 1),
          "parameters": sum(int(x.size) for x in jax.tree.leaves(params)),
          "peak_rss_mib": round(_peak_rss_mib())}


def _child(call: str) -> dict:
  code = (f"import json, sys\nfrom jaxrec.xla import set_cpu_devices\nset_cpu_devices()\n"
          f"from bench.scale import *\nprint('RESULT ' + json.dumps({call}))")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                        env=dict(os.environ, PYTHONPATH=REPO))
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not lines:
    raise SystemExit(f"{call} failed:\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len("RESULT "):])


def plot(rows, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  n = [r["items"] for r in rows]
  fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
  a.plot(n, [r["decode_users_per_s"] for r in rows], "o-")
  a.set(xscale="log", xlabel="catalogue items", ylabel="users/s", ylim=(0, None),
        title="constrained decode, beam 20")
  b.plot(n, [r["prefix_tables_bytes_per_item"] for r in rows], "o-", label="prefix tables")
  b.plot(n, [r["code_table_bytes_per_item"] for r in rows], "s-", label="code table")
  b.set(xscale="log", xlabel="catalogue items", ylabel="bytes per item", ylim=(0, None),
        title="decoding state")
  b.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
  p.add_argument("--users", type=int, default=3000, help="users of each synthetic set")
  p.add_argument("--decode_batch", type=int, default=256)
  p.add_argument("--decode_reps", type=int, default=2)
  p.add_argument("--tokenizer_steps", type=int, default=200,
                 help="RQ-VAE steps timed (an epoch's time is extrapolated: identical steps)")
  p.add_argument("--sasrec_items", type=int, default=1_000_000)
  p.add_argument("--sasrec_batch", type=int, default=256)
  p.add_argument("--out", default=None, help="default bench/results/scale-<platform>.json")
  args = p.parse_args()
  rows, result = [], {}
  path = common.result_path(f"scale-{common.platform()}.json", args.out)
  for n in args.sizes:
    rows.append(_child(f"catalogue({n}, {args.users}, {args.decode_batch}, {args.decode_reps}, "
                       f"{args.tokenizer_steps})"))
    print(json.dumps(rows[-1]), flush=True)
    result["catalogues"] = rows
    common.write_json(path, result)        # a stopped run keeps its finished sizes
  if args.sasrec_items:
    result["sasrec"] = _child(f"sasrec_step({args.sasrec_items}, {args.sasrec_batch}, 5)")
    print(json.dumps(result["sasrec"]), flush=True)
  common.write_json(path, result)
  plot(rows, path[:-len(".json")] + ".png")
  print(f"{common.machine_line()}\nwrote {path}")


if __name__ == "__main__":
  main()
