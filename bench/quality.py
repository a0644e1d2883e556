"""Trains the configured methods with a given budget and writes a results table: R@5, R@10,
N@5, N@10 on valid and test, wall time and device, beside the published numbers.

  python -m bench.quality tiger:default letter:default etegrec:default sasrec:default
  JAXREC_DATA_DIR=../shared/data python -m bench.quality sasrec:instruments --seeds 3
  JAXREC_DATA_DIR=../shared/data python -m bench.quality tiger:instruments letter:instruments \
      --set train.max_steps=300 --name cpu300

(`python bench/quality.py` works too.) A run is `method:variant` with optional per-run
overrides after commas (`letter:instruments,tokenizer.letter.alpha=0`); `--set` applies to
every run. Each run trains in `<workdir>/<method>-<variant>[-<name>]` through
`jaxrec.pipeline` (a finished run is reused, an interrupted one resumes). The table goes to
stdout and, with the rows as JSON (and the machine: device, CPU, jax / flax versions), to
`bench/results/quality-<name or platform>.{md,json}`, rewritten after every finished run
(a run that has ended is read from its results.json, not decoded again); each run's
`ranks.npz` (its users' target ranks) is copied beside the table, to
`ranks/<workdir name>.npz` (`bench/results/ranks/` by default).
`--seeds N` runs every row with seeds 0..N-1 (workdirs `...-seed<k>`, so `--seeds 1` now and
`--seeds 3` later reuse seed 0) and reports each metric's mean +- std (ddof 1; 0 with one
seed). `--first_seed K` runs seeds K..N-1 only (a row's other seeds trained elsewhere;
`bench/claims.py --tables` joins the result files seed by seed for the paired claims, and
`--join FILE... --out STEM` into one table, each row with every seed's best / stop epoch
and training seconds; the stop epoch is the run's last validation):

  python -m bench.quality --join bench/results/quality-scientific-paper-*-s*.json \
      --out bench/results/quality-scientific-paper-converged
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import sys
import time

import numpy as np

if not __package__:   # run as `python bench/quality.py`: the repository root, as `-m` from it
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

# Published numbers (R@5, R@10, N@5, N@10), leave-one-out, full ranking, beam 20.
PUBLISHED = {
    ("tiger", "Instruments"): ("TIGER (LETTER paper, Instruments 2018)", (.0870, .1058, .0737, .0797)),
    ("letter", "Instruments"): ("LETTER-TIGER (LETTER paper)", (.0909, .1122, .0763, .0831)),
    # tiger:letter_ids trains the recommender on LETTER's published IDs: same target row.
    ("tiger-given", "Instruments"): ("LETTER-TIGER (LETTER paper)", (.0909, .1122, .0763, .0831)),
    ("etegrec", "Instruments"): ("ETEGRec (paper; Amazon 2023 Instrument, another set)",
                                 (.0402, .0624, .0260, .0331)),
}
METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")
OTHER_DECODING = ("test_constrained", "test_free")


def parse_override(text: str):
  key, _, value = text.partition("=")
  if not _:
    raise SystemExit(f"override {text!r}: expected key=value")
  try:
    value = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    pass  # a plain string
  return key, value


def apply_overrides(cfg, overrides):
  for key, value in overrides:
    *path, field = key.split(".")
    node = cfg
    for p in path:
      node = node[p]
    if field not in node:
      raise SystemExit(f"unknown config field {key!r}")
    node[field] = value   # ml_collections checks the type


def split_spec(spec: str) -> list:
  """`method:variant,k=v,...` split at the commas outside brackets and quotes, so that a
  value may be a tuple: `simcit:scientific,tokenizer.simcit.views=('text',)`."""
  parts, depth, quote, cur = [], 0, None, ""
  for ch in spec:
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      parts.append(cur)
      cur = ""
      continue
    cur += ch
  return parts + [cur]


def run_tag(spec: str, name: str, seed=None) -> str:
  """The workdir name of a row's run: `<method>-<variant>[-<name>][-<override>...][-seed<k>]`."""
  head, *own = split_spec(spec)
  method, _, variant = head.partition(":")
  return (f"{method}-{variant or 'default'}" + (f"-{name}" if name else "")
          + "".join("-" + "".join(c if c.isalnum() or c in "._" else "_" for c in o) for o in own)
          + (f"-seed{seed}" if seed is not None else ""))


def stop_epoch(workdir: str):
  """The epoch of a run's last validation (where early stopping ended it), from its
  metrics.jsonl; None when the workdir or its records are gone."""
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      records = [json.loads(line) for line in f if line.strip()]
  except OSError:
    return None
  return next((r.get("epoch") for r in reversed(records) if r.get("split") == "valid"), None)


def finished_results(cfg, workdir: str):
  """The results.json of a run of `cfg` that has ended (its steps are those of the workdir's
  latest checkpoint), else None: the queue's reruns read it instead of restoring the run and
  decoding its test split again (minutes a row). A workdir of another config (a variant's
  setting changed since) is refused as the pipeline refuses it."""
  from jaxrec import pipeline
  path, ckpts = os.path.join(workdir, "results.json"), os.path.join(workdir, "checkpoints", "train")
  if not (os.path.exists(path) and os.path.isdir(ckpts)):
    return None
  pipeline.check_config(cfg, workdir)
  steps = [int(n) for n in os.listdir(ckpts) if n.isdigit()]
  with open(path) as f:
    results = json.load(f)
  return results if steps and max(steps) == results.get("steps") else None


def run_one(spec: str, shared, root: str, name: str, seed=None):
  from jaxrec import pipeline
  from jaxrec.config import get_config
  head, *own = split_spec(spec)
  method, _, variant = head.partition(":")
  cfg = get_config(method, variant or "default")
  apply_overrides(cfg, list(shared) + [parse_override(o) for o in own])
  if seed is not None:
    cfg.seed = seed
  tag = run_tag(spec, name, seed)
  workdir = os.path.join(root, tag)
  t0 = time.time()
  results = finished_results(cfg, workdir)
  if results is None:
    results = pipeline.train_and_evaluate(cfg, workdir,
                                          log=lambda m: print(f"[{tag}] {m}", flush=True))
  else:
    print(f"[{tag}] finished: {workdir}/results.json read", flush=True)
  budget = f"{cfg.train.epochs} epochs"
  if "etegrec" in cfg:
    budget = (f"{cfg.train.epochs} alternating + up to {cfg.etegrec.finetune_epochs} "
              "fine-tuning epochs")
  budget = (f"max_steps {cfg.train.max_steps}" if cfg.train.max_steps else
            budget + " (early stopping)")
  overrides = [f"{k}={v}" for k, v in shared] + own
  key = "tiger-given" if method == "tiger" and cfg.tokenizer.source == "given" else method
  return {"run": spec, "workdir": workdir, "method": method, "variant": variant or "default",
          "dataset": results["dataset"], "overrides": overrides, "budget": budget,
          "steps": results["steps"], "best": results["best"], "stop_epoch": stop_epoch(workdir),
          "valid": {k: results["valid"][k] for k in METRICS},
          "test": {k: results["test"][k] for k in METRICS},
          "popularity_test": {k: results["popularity"]["test"][k] for k in METRICS},
          # ETEGRec: its test metrics with the other decoding (constrained beside free)
          **{other: {k: results[other][k] for k in METRICS}
             for other in OTHER_DECODING if other in results},
          "train_seconds": results["train_seconds"],
          "wall_seconds_this_invocation": round(time.time() - t0, 1),
          "device": results["device"], "published": PUBLISHED.get((key, results["dataset"])),
          "seed": cfg.seed}


def keep_ranks(row: dict, stem: str) -> str:
  """A finished run's ranks.npz (each user's target rank, valid and test: a few KB) copied
  beside the table, to <table dir>/ranks/<workdir name>.npz, where it outlives the workdir
  for paired comparisons user by user; its path, or "" for a run without one."""
  src = os.path.join(row["workdir"], "ranks.npz")
  if not os.path.exists(src):
    return ""
  dst = os.path.join(os.path.dirname(stem), "ranks", os.path.basename(row["workdir"]) + ".npz")
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  shutil.copyfile(src, dst)
  return dst


def aggregate(rows) -> dict:
  """One row from the same run with several seeds: each metric's mean and sample std
  (ddof 1) over the seeds, and the per-seed values."""
  out = dict(rows[0])
  out["seeds"] = [r["seed"] for r in rows]
  for split in ("valid", "test", "popularity_test") + tuple(s for s in OTHER_DECODING
                                                          if s in rows[0]):
    vals = {k: [r[split][k] for r in rows] for k in METRICS}
    out[split] = {k: float(np.mean(v)) for k, v in vals.items()}
    out[split + "_std"] = {k: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
                           for k, v in vals.items()}
    out[split + "_per_seed"] = vals
  out["steps"] = "/".join(str(r["steps"]) for r in rows)
  out["train_seconds"] = round(float(np.mean([r["train_seconds"] for r in rows])), 1)
  out["train_seconds_per_seed"] = [r["train_seconds"] for r in rows]
  out["epochs_per_seed"] = [epochs(r) for r in rows]
  return out


def epochs(row) -> str:
  """"best / stop" epoch of a one-seed row ("?" for what its record lacks)."""
  if "epochs" in row:
    return row["epochs"]
  best = (row.get("best") or {}).get("epoch", "?")
  stop = row.get("stop_epoch") or stop_epoch(row.get("workdir", "")) or "?"
  return f"{best} / {stop}"


def seed_rows(row) -> list:
  """A result file's row back as one row per seed (the inverse of aggregate; an older
  file's several seeds without per-seed seconds or epochs get the mean and "?")."""
  if "test_per_seed" not in row:
    return [row]
  n = len(row["seeds"])
  steps = str(row.get("steps", "")).split("/")
  out = []
  for i, seed in enumerate(row["seeds"]):
    r = {k: v for k, v in row.items() if not k.endswith(("_per_seed", "_std")) and k != "seeds"}
    r["seed"] = seed
    for split in ("valid", "test", "popularity_test") + OTHER_DECODING:
      if split + "_per_seed" in row:
        r[split] = {k: row[split + "_per_seed"][k][i] for k in METRICS}
    r["train_seconds"] = row.get("train_seconds_per_seed", [row.get("train_seconds")] * n)[i]
    r["steps"] = steps[i] if len(steps) == n else row.get("steps")
    if "epochs_per_seed" in row or n > 1:
      r["epochs"] = row.get("epochs_per_seed", ["? / ?"] * n)[i]
    out.append(r)
  return out


def per_seed_rows(paths) -> dict:
  """{run spec: {seed: that seed's row}} from quality.py's result files; a run in several
  files (its seeds run apart, `--first_seed`) joins their seeds, a seed in two counts once."""
  out = {}
  for path in paths:
    with open(path) as f:
      for row in json.load(f)["rows"]:
        for r in seed_rows(row):
          out.setdefault(r["run"], {})[r.get("seed", 0)] = r
  return out


def join(paths) -> list:
  """The result files' rows as one row per run with every file's seeds, in seed order."""
  return [aggregate([seeds[s] for s in sorted(seeds)]) for seeds in per_seed_rows(paths).values()]


def table(rows) -> str:
  head = ("| run | data | budget | device | seeds | best / stop epoch | train s | valid R@10 / N@10 | test R@5 | R@10 | "
          "N@5 | N@10 | most-popular R@10 / N@10 | published R@5 / R@10 / N@5 / N@10 |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in rows:
    def f(split, k):
      std = r.get(split + "_std")
      return f"{r[split][k]:.4f}" + (f" +- {std[k]:.4f}" if std else "")
    pub = r["published"]
    pub_s = f"{pub[0]}: " + " / ".join(f"{x:.4f}" for x in pub[1]) if pub else ""
    run = r["run"] + (f" ({', '.join(r['overrides'])})" if r["overrides"] else "")
    for other, label in (("test_constrained", "decoded free; constrained"),
                         ("test_free", "free decoding")):
      if other in r:
        run += f" ({label}: test R@10 / N@10 {f(other, 'recall@10')} / {f(other, 'ndcg@10')})"
    seeds = ", ".join(str(x) for x in r.get("seeds", [r.get("seed", 0)]))
    stops = ", ".join(r.get("epochs_per_seed") or [epochs(r)])
    secs = ", ".join(f"{x:,.0f}" for x in r.get("train_seconds_per_seed") or [r["train_seconds"]])
    pop = r.get("popularity_test")
    pop_s = f"{pop['recall@10']:.4f} / {pop['ndcg@10']:.4f}" if pop else ""
    lines.append(f"| {run} | {r['dataset']} | {r['budget']}, {r['steps']} steps | {r['device']} | "
                 f"{seeds} | {stops} | {secs} | {f('valid', 'recall@10')} / "
                 f"{f('valid', 'ndcg@10')} | {f('test', 'recall@5')} | {f('test', 'recall@10')} | "
                 f"{f('test', 'ndcg@5')} | {f('test', 'ndcg@10')} | {pop_s} | {pub_s} |")
  return "\n".join(lines)


def _without_invocation_time(rows):
  return json.loads(json.dumps(rows, default=str),
                    object_hook=lambda d: {k: v for k, v in d.items()
                                           if k != "wall_seconds_this_invocation"})


def write_table(stem: str, rows) -> str:
  """Writes stem.json and stem.md, except where stem.json already holds the same rows but for
  the invocation's time (a queue restarted over finished runs leaves their files as they
  were)."""
  md = table(rows)
  try:
    with open(stem + ".json") as f:
      old = json.load(f).get("rows")
  except (OSError, ValueError):     # none yet, or cut short by a stop: written anew
    old = None
  if old is not None and _without_invocation_time(old) == _without_invocation_time(rows):
    return md
  common.write_json(stem + ".json", {"rows": rows})
  with open(stem + ".md", "w") as f:
    f.write(md + "\n")
  return md


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("runs", nargs="*", help="method:variant[,key=value...]")
  p.add_argument("--join", nargs="+", default=None, metavar="FILE",
                 help="train nothing: one table from these result files (.json), each run's "
                      "seeds joined across files, to --out")
  p.add_argument("--set", action="append", default=[], help="key=value for every run")
  p.add_argument("--name", default="", help="suffix of the workdirs and the result files")
  p.add_argument("--seeds", type=int, default=None,
                 help="runs per row with seeds 0..N-1 in workdirs ...-seed<k> (mean +- std in "
                      "the table); a later call with a larger N reuses the finished seeds")
  p.add_argument("--first_seed", type=int, default=0,
                 help="with --seeds N: run seeds first_seed..N-1 only")
  p.add_argument("--workdir", default="runs/quality")
  p.add_argument("--out", default=None, help="output stem (default bench/results/quality-<name|platform>)")
  common.add_cpu_devices(p)
  args = p.parse_args()
  common.set_cpu_devices(args)
  shared = [parse_override(s) for s in args.set]
  if args.first_seed and not (args.seeds and 0 <= args.first_seed < args.seeds):
    raise SystemExit(f"--first_seed {args.first_seed} needs --seeds N with N > {args.first_seed}")
  stem = common.result_path(f"quality-{args.name or common.platform()}", args.out)
  if args.join:
    print(write_table(stem, join(args.join)))
    print(f"wrote {stem}.md and {stem}.json")
    return
  if not args.runs:
    p.error("give runs (method:variant), or --join FILE...")

  write = lambda rows: write_table(stem, rows)

  # The table is rewritten after every finished run (a row's finished seeds so far), so that
  # a queue stopped at any point, or a machine lost, leaves every finished run's figures.
  rows = []
  for spec in args.runs:
    if not args.seeds:
      rows.append(run_one(spec, shared, args.workdir, args.name))
      keep_ranks(rows[-1], stem)
      write(rows)
      continue
    done = []
    for seed in range(args.first_seed, args.seeds):
      done.append(run_one(spec, shared, args.workdir, args.name, seed))
      keep_ranks(done[-1], stem)
      write(rows + [aggregate(done)])
    rows.append(aggregate(done))
  print(write(rows))
  print(f"wrote {stem}.md and {stem}.json")


if __name__ == "__main__":
  main()
