"""Speed benchmark: train-step and decoding throughput, FLOP/s, compile times.

  python -m bench.speed                       # TIGER preset, Instruments-sized inputs
  python -m bench.speed --quick               # a smaller grid (minutes on 2 CPU cores)
  python -m bench.speed --programs tiger:scientific tiger:instruments   # programs per run
  python -m bench.speed --data scientific --model tiger:scientific_decoder   # decoder-only

(`python bench/speed.py` works too.) Prints a table and writes JSON (the machine: device,
CPU, jax / flax versions; the config) to --out, default bench/results/speed-<platform>.json.
Timings use block_until_ready and exclude compilation, which is reported on its own. Histories
follow the real Instruments length distribution when $JAXREC_DATA_DIR/instruments is
present, else the synthetic data set's. The train step's throughput is that of one whole
shuffled epoch: every history bucket's compiled step is timed (--train_reps times, the
buckets in turn) and its median weighted by the bucket's share of the epoch's batches.
"""
from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
import time

if not __package__:   # run as `python bench/speed.py`: the repository root, as `-m` from it
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from bench import common  # noqa: E402
from jaxrec import decode, distributed  # noqa: E402
from jaxrec.config import get_config  # noqa: E402
from jaxrec.data import (bucket_lengths, eval_batches, leave_one_out,  # noqa: E402
                         load_dataset, plan_batches, gather_batch)
from jaxrec.optim import TrainState, make_optimizer  # noqa: E402
from jaxrec.recommender import family  # noqa: E402
from jaxrec.tokenizer import codes as codes_lib  # noqa: E402
from jaxrec.tokenizer import train as tok_train  # noqa: E402
from jaxrec.tokenizer.rqvae import RQVAE, rqvae_config  # noqa: E402
from jaxrec.xla import compiler_options  # noqa: E402


def _flops(compiled) -> float:
  """XLA's FLOP count of a compiled step: its count for one device's program (the batch's
  share) times the devices the step's batch is split over."""
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):
    ca = ca[0]
  n = max(len(s.device_set) for s in jax.tree.leaves(compiled.input_shardings))
  return n * float(ca.get("flops", 0.0)) if ca else 0.0


def mesh() -> Mesh:
  """The data-parallel mesh of every device, as `jaxrec.train`'s (on CPU: --cpu_devices)."""
  return Mesh(np.array(jax.devices()), ("data",))


def placements():
  """(replicated, batch-split) shardings over `mesh()`, as `jaxrec.train` places its state
  and batches."""
  return NamedSharding(mesh(), P()), NamedSharding(mesh(), P("data"))


def eval_jit(step, **static):
  """An evaluation step as `jaxrec.train` compiles it: each device its own rows."""
  return distributed.per_device_eval(functools.partial(step, **static), mesh())


def _peak_bytes(compiled) -> int:
  try:
    m = compiled.memory_analysis()
    return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)
  except Exception:  # not every backend reports it
    return -1


def random_codes(n_items, levels=3, k=256, seed=0):
  """n distinct-ish random IDs + the collision level (as the tokenizer would produce)."""
  rng = np.random.default_rng(seed)
  base = rng.integers(0, k, (n_items, levels)).astype(np.int32)
  return codes_lib.append_suffix(base, k)


def load_inputs(args):
  """Instruments (or --data scientific) splits when available (real length distribution),
  else synthetic; the recommender of --model."""
  cfg = get_config("tiger", args.data)   # its data.dir: $JAXREC_DATA_DIR/<data>
  variant = (args.data if os.path.exists(os.path.join(cfg.data.dir, f"{cfg.data.name}.inter.json"))
             else "default")
  if variant == "default":
    cfg.data = get_config("tiger", "default").data
  method, _, model_variant = args.model.partition(":")
  cfg.model = get_config(method, model_variant).model
  if args.buckets:
    cfg.data.buckets = tuple(args.buckets)
  ds = load_dataset(cfg.data)
  return cfg, ds, leave_one_out(ds, cfg.data.max_len), variant


def epoch_totals(plan, step_s, flops):
  """(real samples, seconds, FLOPs) of one epoch's planned batches [(bucket, sample indices,
  -1 for padding rows)], each batch priced at its bucket's step time and FLOP count."""
  real = float(sum((idx >= 0).sum() for _, idx in plan))
  return real, sum(step_s[b] for b, _ in plan), sum(flops[b] for b, _ in plan)


def build_model(cfg, ds, splits, codes_np, dtype: str):
  """(model, its steps module, parameters) of cfg.model (`recommender.family`: the T5 or
  the decoder-only recommender) over 256-code levels, random weights."""
  model, rec = family.build(cfg.model, [256] * codes_np.shape[1], dtype)
  first = gather_batch(ds, splits["train"], 4, np.arange(2))
  return model, rec, rec.init_params(model, jnp.asarray(codes_np), first, jax.random.key(0))


def train_setup(cfg, ds, splits, codes_np, batch: int, dtype: str = "float32"):
  """What a timed train step needs: (model, steps module, tx, state, codes on device,
  buckets, one whole shuffled epoch's plan [(bucket, indices)], each bucket's first batch
  indices)."""
  model, rec, params = build_model(cfg, ds, splits, codes_np, dtype)
  buckets = bucket_lengths(cfg.data.buckets, cfg.data.max_len)
  codes = jnp.asarray(codes_np)
  tx = make_optimizer(5e-4, 0.01, 10_000, 100, 1.0)
  rep, _ = placements()
  state = jax.device_put(TrainState(jnp.zeros((), jnp.int32), params, tx.init(params)), rep)
  codes = jax.device_put(codes, rep)
  plan = plan_batches(splits["train"], batch, buckets, True, 0, 0)   # one whole epoch
  first_idx = {}
  for b, idx in plan:
    first_idx.setdefault(b, idx)
  return model, rec, tx, state, codes, buckets, plan, first_idx


def bench_train(cfg, ds, splits, codes_np, args):
  model, rec, tx, state, codes, buckets, plan, first_idx = train_setup(cfg, ds, splits, codes_np,
                                                                       args.batch, args.dtype)
  params = state.params
  fn = jax.jit(functools.partial(rec.train_step, model=model, tx=tx), donate_argnums=0,
               compiler_options=compiler_options("train"))
  key = jax.random.key(1)
  _, split = placements()
  compiled, compile_s, flops, batch_of = {}, {}, {}, {}
  for b in buckets:
    if b not in first_idx:
      continue
    batch_of[b] = jax.device_put(gather_batch(ds, splits["train"], b, first_idx[b]), split)
    t = time.perf_counter()
    compiled[b] = fn.lower(state, batch_of[b], codes, key).compile()
    compile_s[b] = time.perf_counter() - t
    flops[b] = _flops(compiled[b])
    state, out = compiled[b](state, batch_of[b], codes, key)   # warm
    print(f"  train bucket {b}: compiled in {compile_s[b]:.1f}s", flush=True)
  jax.block_until_ready(out)
  # Each bucket's step timed `train_reps` times, the buckets taken in turn (the machine's
  # drift spread over all), then weighted by the epoch's own count of batches per bucket:
  # the throughput of a whole epoch without running one.
  times = {b: [] for b in compiled}
  for _ in range(args.train_reps):
    for b, c in compiled.items():
      t = time.perf_counter()
      state, out = c(state, batch_of[b], codes, key)
      jax.block_until_ready(out)
      times[b].append(time.perf_counter() - t)
  step_s = {b: float(np.median(v)) for b, v in times.items()}
  count = collections.Counter(b for b, _ in plan)
  real, dt, total_flops = epoch_totals(plan, step_s, flops)
  n_params = sum(int(x.size) for x in jax.tree.leaves(params))
  per_bucket = {str(b): {"batches": count[b], "step_ms": round(1000 * step_s[b], 1),
                         "gflop": round(flops[b] / 1e9, 2),
                         "gflops": round(flops[b] / step_s[b] / 1e9, 1)} for b in compiled}
  return {"samples_per_s": real / dt, "steps": len(plan), "batch": args.batch,
          "step_ms": 1000 * dt / len(plan), "epoch_s": dt, "reps": args.train_reps,
          "gflop_per_sample": total_flops / real / 1e9, "achieved_gflops": total_flops / dt / 1e9,
          "per_bucket": per_bucket, "compile_s": {str(k): round(v, 1) for k, v in compile_s.items()},
          "compile_s_total": round(sum(compile_s.values()), 1), "parameters": n_params,
          "buckets": list(buckets)}, model, rec, state.params


def bench_decode(model, rec, params, ds, splits, codes_np, args, beams, catalogues, length):
  """Users/s across beam widths and catalogue sizes at one history bucket."""
  rows = []
  fn_cache = {}
  rep, split = placements()
  params = jax.device_put(params, rep)
  for n_items in catalogues:
    codes_n = codes_np if n_items == codes_np.shape[0] else random_codes(n_items, seed=n_items)
    tables = jax.device_put(decode.prefix_tables(codes_n), rep)
    codes = jax.device_put(codes_n, rep)
    batch = jax.device_put(gather_batch(ds, splits["test"], length, np.arange(args.decode_batch)),
                           split)
    for beam in beams:
      fn = fn_cache.setdefault(beam, eval_jit(rec.eval_step, model=model, beam=beam))
      t = time.perf_counter()
      compiled = fn.lower(params, batch, codes, tables).compile()
      compile_s = time.perf_counter() - t
      out = compiled(params, batch, codes, tables)
      jax.block_until_ready(out)
      reps = max(1, args.decode_reps)
      t = time.perf_counter()
      for _ in range(reps):
        jax.device_get(compiled(params, batch, codes, tables)[0])   # as evaluate_split
      dt = (time.perf_counter() - t) / reps
      rows.append({"items": n_items, "beam": beam, "history": length, "users_per_s": args.decode_batch / dt,
                   "batch_ms": 1000 * dt, "compile_s": round(compile_s, 1),
                   "gflops": _flops(compiled) / dt / 1e9, "peak_mib": _peak_bytes(compiled) / 2**20})
      print(f"  decode items {n_items:>8,} beam {beam:>3}: {rows[-1]['users_per_s']:7.1f} users/s, "
            f"{rows[-1]['batch_ms']:8.1f} ms/batch, compile {compile_s:.1f}s", flush=True)
  return rows


def bench_input(ds, splits, buckets, batch_sizes, n_batches: int):
  """The input pipeline alone: the training iterator (grain, planned bucketed batches
  gathered on its prefetch threads: 16 by default) drained for `n_batches` from its
  creation (planning and the threads' start included), no step."""
  from jaxrec.data import BatchIterator
  out = {}
  for b in batch_sizes:
    t = time.perf_counter()
    it = BatchIterator(ds, splits["train"], b, buckets, shuffle=True, seed=0)
    gen = it.epoch_batches()
    n = min(n_batches, len(it))
    samples = sum(float(next(gen)["weight_B"].sum()) for _ in range(n))
    dt = time.perf_counter() - t
    out[str(b)] = {"batches_per_s": round(n / dt, 1), "samples_per_s": round(samples / dt, 1),
                   "batches": n}
  return out


def bench_decode_split(model, rec, params, ds, splits, codes_np, args, buckets):
  """Users/s over the real test split (its bucket mix), beam 20."""
  rep, split = placements()
  params = jax.device_put(params, rep)
  tables = jax.device_put(decode.prefix_tables(codes_np), rep)
  codes = jax.device_put(codes_np, rep)
  fn = eval_jit(rec.eval_step, model=model, beam=20)
  batches = [jax.device_put(b, split)
             for b in eval_batches(ds, splits["test"], args.decode_batch, buckets)]
  if args.decode_batches:   # a fixed sample of the split's batches (every bucket length kept)
    batches = batches[::max(len(batches) // args.decode_batches, 1)][:args.decode_batches]
  compiled, compile_s, flops = {}, 0.0, {}
  for batch in batches:
    l = batch["history_BxL"].shape[1]
    if l not in compiled:
      t = time.perf_counter()
      compiled[l] = fn.lower(params, batch, codes, tables).compile()
      compile_s += time.perf_counter() - t
      flops[l] = _flops(compiled[l])
      jax.block_until_ready(compiled[l](params, batch, codes, tables))
  users = sum(float(b["weight_B"].sum()) for b in batches)
  t = time.perf_counter()
  for batch in batches:   # each batch's metric sums fetched, as evaluate_split does
    jax.device_get(compiled[batch["history_BxL"].shape[1]](params, batch, codes, tables)[0])
  dt = time.perf_counter() - t
  total = sum(flops[b["history_BxL"].shape[1]] for b in batches)
  return {"users_per_s": users / dt, "users": int(users), "seconds": dt, "batch": args.decode_batch,
          "compile_s_total": round(compile_s, 1), "achieved_gflops": total / dt / 1e9,
          "gflop_per_user": total / users / 1e9}


def bench_tokenizer(args, in_dim=32, n_items=9922):
  tok_cfg = get_config("tiger", "instruments").tokenizer
  arch = rqvae_config(tok_cfg, in_dim)
  model = RQVAE(arch)
  feats = jax.random.normal(jax.random.key(0), (n_items, in_dim))
  params = model.init(jax.random.key(1), feats[:2])
  tx = make_optimizer(1e-3, 1e-4, 1000, 10, 1.0)
  state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  idx = tok_train.epoch_batches(jax.random.key(2), n_items, tok_cfg.batch_size)
  fn = functools.partial(tok_train.train_epoch, model=model, tx=tx)
  t = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=0).lower(state, feats, idx, jax.random.key(3)).compile()
  compile_s = time.perf_counter() - t
  state, m = compiled(state, feats, idx, jax.random.key(3))
  jax.block_until_ready(m)
  reps = 20
  t = time.perf_counter()
  for _ in range(reps):
    state, m = compiled(state, feats, idx, jax.random.key(3))
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t) / reps
  return {"items_per_s": idx.size / dt, "epoch_ms": 1000 * dt, "steps_per_epoch": idx.shape[0],
          "batch": tok_cfg.batch_size, "achieved_gflops": _flops(compiled) / dt / 1e9,
          "compile_s": round(compile_s, 1)}


def bench_sasrec(cfg, ds, splits, args):
  """SASRec (configs/sasrec.py:instruments settings, full softmax CE): train windows/s and
  positions/s, and full-ranking evaluation of the whole test split (users/s)."""
  from jaxrec.data import sequence_windows
  from jaxrec.recommender import sasrec
  scfg = get_config("sasrec", "instruments")
  buckets = bucket_lengths(cfg.data.buckets, cfg.data.max_len)
  model = sasrec.SASRec(sasrec.model_config(scfg.model, ds.n_items, cfg.data.max_len))
  windows = sequence_windows(ds, cfg.data.max_len)
  first = gather_batch(ds, windows, buckets[0], np.arange(2))
  params = model.init(jax.random.key(0), first["history_BxL"], first["mask_BxL"], False)
  tx = make_optimizer(scfg.train.lr, 0.0, 10_000, 0, 0.0, "constant")
  rep, split = placements()
  state = jax.device_put(TrainState(jnp.zeros((), jnp.int32), params, tx.init(params)), rep)
  fn = jax.jit(functools.partial(sasrec.train_step, model=model, tx=tx, loss=scfg.model.loss,
                                 negatives=scfg.model.negatives), donate_argnums=0,
               compiler_options=compiler_options("train"))
  key = jax.random.key(1)
  plan = plan_batches(windows, args.batch, buckets, True, 0, 0)     # one whole epoch
  plan = plan[:args.train_steps] if args.train_steps else plan
  batches = [(b, jax.device_put(gather_batch(ds, windows, b, idx), split)) for b, idx in plan]
  compiled, compile_s = {}, 0.0
  for b, batch in batches:
    if b not in compiled:
      t = time.perf_counter()
      compiled[b] = fn.lower(state, batch, key).compile()
      compile_s += time.perf_counter() - t
      state, out = compiled[b](state, batch, key)   # warm
  jax.block_until_ready(out)
  flops = sum(_flops(compiled[b]) for b, _ in batches)
  real = sum(float(x["weight_B"].sum()) for _, x in batches)
  positions = sum(float(x["mask_BxL"].sum()) for _, x in batches)
  t = time.perf_counter()
  pending = None
  for b, batch in batches:   # the previous step's metrics fetched, as the train loop does
    state, out = compiled[b](state, batch, key)
    if pending is not None:
      jax.device_get(pending)
    pending = out
  jax.block_until_ready(out)
  dt = time.perf_counter() - t
  ev = eval_jit(sasrec.eval_step, model=model, k=20)
  test = [jax.device_put(b, split)
          for b in eval_batches(ds, splits["test"], args.decode_batch, buckets)]
  ev_compiled, ev_compile_s = {}, 0.0
  for batch in test:
    l = batch["history_BxL"].shape[1]
    if l not in ev_compiled:
      t = time.perf_counter()
      ev_compiled[l] = ev.lower(state.params, batch).compile()
      ev_compile_s += time.perf_counter() - t
  ev_flops = sum(_flops(ev_compiled[b["history_BxL"].shape[1]]) for b in test)
  t = time.perf_counter()
  for batch in test:
    jax.device_get(ev_compiled[batch["history_BxL"].shape[1]](state.params, batch)[0])
  ev_dt = time.perf_counter() - t
  return {"loss": scfg.model.loss, "d": scfg.model.d, "blocks": scfg.model.blocks,
          "batch": args.batch, "steps": len(batches), "windows_per_s": real / dt,
          "positions_per_s": positions / dt, "step_ms": 1000 * dt / len(batches),
          "achieved_gflops": flops / dt / 1e9, "compile_s": round(compile_s, 1),
          "eval_users": len(splits["test"]), "eval_s": ev_dt,
          "eval_users_per_s": len(splits["test"]) / ev_dt,
          "eval_achieved_gflops": ev_flops / ev_dt / 1e9, "eval_compile_s": round(ev_compile_s, 1),
          "parameters": sum(int(x.size) for x in jax.tree.leaves(params))}


PROGRAMS_CHILD = """
import json, os, sys
from jaxrec import pipeline
from jaxrec.config import get_config
from jaxrec.xla import enable_compile_cache, set_cpu_devices
set_cpu_devices(); enable_compile_cache()                 # as jaxrec.train does
method, variant, shapes, workdir = sys.argv[1:5]
cfg = get_config(method, variant)
cfg.data.shapes = shapes
cfg.train.max_steps, cfg.train.tensorboard = 1, False   # the programs of a run, one step of it
cfg.tokenizer.epochs = 1                                  # (its own programs are not counted)
if os.environ.get("JAXREC_PROGRAMS_AHEAD") == "1":   # the loop's ahead-of-time programs only
  from jaxrec.xla import compile_listener, compile_summary
  loop, compiled = pipeline.resumed_loop(pipeline.setup(cfg, workdir, log=lambda m: None),
                                         log=lambda m: None), []
  with compile_listener(compiled.append):
    loop.compile_ahead()
  programs, total = [dict(r, compile=r["program"]) for r in compiled], compile_summary(compiled)
else:
  res = pipeline.train_and_evaluate(cfg, workdir, log=lambda m: None)
  recs = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  programs, total = [r for r in recs if "compile" in r], res["programs_this_invocation"]
print(json.dumps({"programs": programs, "total": total}, default=str))
"""


def bench_programs(spec: str, shapes: str, ahead_only: bool = False) -> dict:
  """The programs a run of `spec` compiles with data.shapes=`shapes` (the loop's, ahead of
  time, and the test split's), their compile seconds with an empty persistent cache, and
  again on the same host with the cache the first run filled: two one-step runs in
  subprocesses (tokenizer fit cut to one epoch; its programs are not among these).
  `ahead_only`: only the programs the loop compiles before its first step (train and
  validation), no step and no decoding (a large set's test decode is what takes long)."""
  import json
  import subprocess
  import tempfile
  method, _, variant = spec.partition(":")
  root = tempfile.mkdtemp(prefix="jaxrec-programs-")
  out = {"spec": spec, "shapes": shapes, "ahead_only": ahead_only}
  for phase in ("cold", "warm"):
    env = dict(os.environ, JAXREC_COMPILE_CACHE=os.path.join(root, "xla"),
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
               JAXREC_PROGRAMS_AHEAD="1" if ahead_only else "0")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", PROGRAMS_CHILD, method, variant or "default",
                           shapes, os.path.join(root, phase)], capture_output=True, text=True,
                          env=env)
    if proc.returncode:
      raise SystemExit(f"programs of {spec} ({shapes}, {phase}) failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    out[phase] = {"count": r["total"]["count"], "from_cache": r["total"]["from_cache"],
                  "compile_s": r["total"]["compile_seconds"],
                  "run_s": round(time.time() - t0, 1),
                  "by_program": dict(collections.Counter(p["compile"] for p in r["programs"]))}
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--decode_batch", type=int, default=256)
  p.add_argument("--train_steps", type=int, default=0,
                 help="SASRec: time only this many of an epoch's steps (0: the whole epoch)")
  p.add_argument("--train_reps", type=int, default=3,
                 help="T5 train step: timed steps per history bucket (the median is weighted by "
                      "the bucket's batches in a whole epoch)")
  p.add_argument("--decode_reps", type=int, default=2)
  p.add_argument("--buckets", type=int, nargs="+", default=None,
                 help="history-length buckets (default: configs/tiger.py:instruments' data.buckets)")
  p.add_argument("--beams", type=int, nargs="+", default=[1, 5, 10, 20, 50])
  p.add_argument("--catalogues", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
  p.add_argument("--grid_history", type=int, default=8, help="history bucket for the beam x catalogue grid")
  p.add_argument("--quick", action="store_true", help="fewer steps and a smaller grid")
  p.add_argument("--skip", nargs="*", default=[],
                 choices=["train", "tokenizer", "decode", "grid", "sasrec", "input"])
  p.add_argument("--decode_batches", type=int, default=0,
                 help="decode this many of the test split's batches, evenly spaced (0: all)")
  p.add_argument("--head", choices=["level", "vocab"], default="level",
                 help="the T5's output head (model.head); 'vocab' is LETTER-TIGER's")
  p.add_argument("--extra_vocab", type=int, default=0, help="model.extra_vocab ('vocab' head)")
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                 help="the T5's compute dtype (train.dtype; float32 parameters either way)")
  p.add_argument("--model", default="tiger:instruments", metavar="METHOD:VARIANT",
                 help="the config whose model is timed (tiger:scientific_decoder: the "
                      "decoder-only recommender)")
  p.add_argument("--data", default="instruments", choices=["instruments", "scientific"],
                 help="whose history lengths the batches have")
  p.add_argument("--programs", nargs="*", default=[], metavar="METHOD:VARIANT",
                 help="only count the programs runs of these configs compile and their compile "
                      "seconds, per data.shapes (buckets, max_len), with an empty and a warm "
                      "persistent compilation cache (one-step runs in subprocesses)")
  p.add_argument("--programs_shapes", nargs="+", default=["buckets", "max_len"],
                 choices=["buckets", "max_len"], help="the data.shapes values --programs measures")
  p.add_argument("--programs_ahead", action="store_true",
                 help="--programs: only the programs compiled before the first step (train and "
                      "validation; no step, no decoding: for sets whose decode takes long)")
  common.add_cpu_devices(p)
  p.add_argument("--out", default=None, help="default bench/results/speed-<platform>.json")
  args = p.parse_args()
  common.set_cpu_devices(args)
  if args.programs:
    rows = []
    path = common.result_path(f"programs-{common.platform()}.json", args.out)
    for spec in args.programs:
      for shapes in args.programs_shapes:
        rows.append(r := bench_programs(spec, shapes, args.programs_ahead))
        common.write_json(path, {"programs": rows})       # a cap never loses a finished row
        print(f"programs of {spec}, data.shapes={shapes}: " + "; ".join(
            f"{phase} cache: {r[phase]['count']} programs {r[phase]['by_program']} "
            f"({r[phase]['from_cache']} from the cache) in {r[phase]['compile_s']}s "
            f"({'set-up and compile' if args.programs_ahead else 'one-step run'} {r[phase]['run_s']}s)"
            for phase in ("cold", "warm")), flush=True)
    print(f"wrote {path}")
    return
  if args.quick:
    args.train_steps, args.train_reps, args.decode_reps = 20, 1, 1
    args.beams, args.catalogues = [1, 20], [10_000, 1_000_000]
  cfg, ds, splits, source = load_inputs(args)
  if family.kind_of(cfg.model) == "t5":
    cfg.model.head, cfg.model.extra_vocab = args.head, args.extra_vocab
  codes_np = random_codes(ds.n_items)
  result = {"dtype": args.dtype, "inputs": source, "items": ds.n_items, "max_len": cfg.data.max_len,
            "model": cfg.model.to_dict(), "compiler_options": {k: compiler_options(k) for k in ("train", "decode")}}
  print(f"{common.machine_line()}; inputs {source} ({ds.n_items} items)", flush=True)
  if "tokenizer" not in args.skip:
    result["tokenizer"] = bench_tokenizer(args)
    r = result["tokenizer"]
    print(f"tokenizer step (TIGER RQ-VAE, 32-d, batch {r['batch']}): {r['items_per_s']:,.0f} items/s, "
          f"{r['achieved_gflops']:.1f} GFLOP/s, compile {r['compile_s']}s", flush=True)
  if "sasrec" not in args.skip:
    result["sasrec"] = r = bench_sasrec(cfg, ds, splits, args)
    print(f"SASRec train ({r['loss']}, d {r['d']}, batch {r['batch']}): {r['windows_per_s']:.0f} "
          f"windows/s = {r['positions_per_s']:.0f} target positions/s, {r['step_ms']:.0f} ms/step, "
          f"{r['achieved_gflops']:.1f} GFLOP/s; full-ranking eval of {r['eval_users']} test users: "
          f"{r['eval_s']:.1f} s = {r['eval_users_per_s']:.0f} users/s, "
          f"{r['eval_achieved_gflops']:.1f} GFLOP/s", flush=True)
  if "input" not in args.skip:
    result["input"] = r = bench_input(ds, splits, bucket_lengths(cfg.data.buckets, cfg.data.max_len),
                                      (256, 1024), 40 if args.quick else 200)
    print("input pipeline alone: " + ", ".join(
        f"batch {b}: {v['batches_per_s']:.1f} batches/s = {v['samples_per_s']:.0f} samples/s"
        for b, v in r.items()), flush=True)
  model, params = None, None
  if "train" not in args.skip:
    result["train"], model, rec, params = bench_train(cfg, ds, splits, codes_np, args)
    r = result["train"]
    print(f"train step (batch {r['batch']}, buckets {r['buckets']}): {r['samples_per_s']:.1f} samples/s, "
          f"{r['step_ms']:.0f} ms/step, {r['gflop_per_sample']:.3f} GFLOP/sample, "
          f"{r['achieved_gflops']:.1f} GFLOP/s, compile {r['compile_s_total']}s", flush=True)
  if model is None:
    model, rec, params = build_model(cfg, ds, splits, codes_np, args.dtype)
  if "decode" not in args.skip:
    result["decode_test_split"] = bench_decode_split(model, rec, params, ds, splits, codes_np, args,
                                                     bucket_lengths(cfg.data.buckets, cfg.data.max_len))
    r = result["decode_test_split"]
    print(f"decode test split (beam 20, batch {r['batch']}, {r['users']} users): {r['users_per_s']:.1f} users/s, "
          f"{r['gflop_per_user']:.3f} GFLOP/user, {r['achieved_gflops']:.1f} GFLOP/s, "
          f"compile {r['compile_s_total']}s", flush=True)
  if "grid" not in args.skip:
    result["decode_grid"] = bench_decode(model, rec, params, ds, splits, codes_np, args, args.beams,
                                         args.catalogues, args.grid_history)
  print(f"wrote {common.write_json(common.result_path(f'speed-{common.platform()}.json', args.out), result)}")


if __name__ == "__main__":
  main()
