"""Where a finished run's time went, from what its workdir recorded (the claims issue: "profile
one Scientific run end to end"): the tokenizer fit (`codes.json`), the programs compiled
(`metrics.jsonl`'s compile records), the training steps (`results.json`'s train_seconds:
the epochs' steps alone), the validation decodes during training (each evaluation's
`decode_s`) and the rest of the invocation (the final test decode, checkpoints, data).

  python -m bench.experiments.run_profile /work/runs/quality/tiger-scientific-paper-seed1 \\
      [more workdirs] [--out bench/results/run-profile-scientific.json]

A run resumed across invocations reports its last invocation's wall time only; the other
parts add up over the whole run, so "rest" is left out for it.

`--samples 500 1000 2000`: what validating on a fixed sample of S users instead of the whole
split would do to the checkpoint choice. The best checkpoint's validation split is decoded
again user by user (`gap_by_group.per_user`); the per-user NDCG@10's standard deviation
gives a sample's standard error (with the finite-population correction), and the table
lists the run's evaluations whose whole-split NDCG@10 is within one such error of the best:
the checkpoints a sample could not tell apart.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

if not __package__:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from bench import common  # noqa: E402


def profile(workdir: str) -> dict:
  """The run's seconds by part, with the validation decodes' count and users."""
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  compile_s, valid_s, evals, users = 0.0, 0.0, 0, 0
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if "compile" in record:
        compile_s += record["seconds"]
      elif record.get("split") == "valid" and "decode_s" in record:
        valid_s += record["decode_s"]
        evals += 1
        users = record.get("users", users)
  fit_s = 0.0
  codes = os.path.join(workdir, "codes.json")
  if os.path.exists(codes):
    with open(codes) as f:
      fit_s = json.load(f).get("stats", {}).get("fit_seconds", 0.0)
  parts = {"tokenizer_fit_s": fit_s, "compile_s": round(compile_s, 1),
           "train_steps_s": results["train_seconds"], "valid_decodes_s": round(valid_s, 1)}
  wall = results.get("wall_seconds_this_invocation")
  one_invocation = wall is not None and wall >= sum(parts.values())
  if one_invocation:
    parts["rest_s"] = round(wall - sum(parts.values()), 1)
  total = sum(parts.values())
  return {"workdir": workdir, "method": results["method"], "variant": results.get("variant"),
          "dataset": results["dataset"], "device": results["device"],
          "best_epoch": results["best"].get("epoch"), "evaluations": evals,
          "valid_users": users, "wall_s": wall if one_invocation else None, **parts,
          "shares": {k[:-2]: round(v / total, 4) for k, v in parts.items()}}


def sample_noise(workdir: str, samples) -> dict:
  """Per sample size: the standard error of a sample's validation NDCG@10 and the run's
  evaluations (epoch, whole-split NDCG@10) within one standard error of the best."""
  import numpy as np
  from bench.experiments.gap_by_group import hits, per_user
  ranks = np.array([rank for _, rank, _ in per_user(workdir, "valid")["users"].values()])
  _, ndcg = hits(ranks)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    evals = [(r["epoch"], r["ndcg@10"]) for r in map(json.loads, f)
             if r.get("split") == "valid" and "ndcg@10" in r]
  best = max(v for _, v in evals)
  n, sd = len(ndcg), float(np.std(ndcg, ddof=1))
  out = {"users": n, "per_user_sd": round(sd, 4), "whole_split_se": round(sd / np.sqrt(n), 4),
         "evaluations": len(evals), "samples": {}}
  for size in samples:
    se = sd / np.sqrt(size) * np.sqrt(1.0 - size / n)
    out["samples"][size] = {"se": round(float(se), 4), "within_one_se": [
        [epoch, round(v, 4)] for epoch, v in evals if best - v < se]}
  return out


def table(rows) -> str:
  head = ("| run | best epoch | evaluations x users | tokenizer fit s | compile s | train steps s "
          "| validation decodes s | rest s | validation share |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in rows:
    lines.append(
        f"| {os.path.basename(r['workdir'])} | {r['best_epoch']} | {r['evaluations']} x "
        f"{r['valid_users']:,} | {r['tokenizer_fit_s']:,.1f} | {r['compile_s']:,.1f} | "
        f"{r['train_steps_s']:,.1f} | {r['valid_decodes_s']:,.1f} | "
        f"{'' if r.get('rest_s') is None else format(r['rest_s'], ',.1f')} | "
        f"{100 * r['shares']['valid_decodes']:.1f} % |")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("workdirs", nargs="+")
  p.add_argument("--out", default=None, help="a .json file for the rows (and the machine)")
  p.add_argument("--samples", type=int, nargs="*", default=[],
                 help="validation sample sizes to weigh against the whole split")
  common.add_cpu_devices(p)
  args = p.parse_args()
  rows = [profile(w) for w in args.workdirs]
  print(table(rows))
  if args.samples:
    common.set_cpu_devices(args)
    for row in rows:
      row["sample_noise"] = noise = sample_noise(row["workdir"], args.samples)
      print(f"{os.path.basename(row['workdir'])}: per-user NDCG@10 sd {noise['per_user_sd']}, "
            f"whole split's standard error {noise['whole_split_se']}")
      for size, s in noise["samples"].items():
        print(f"  {size} users: standard error {s['se']}; {len(s['within_one_se'])} of "
              f"{noise['evaluations']} evaluations within it of the best: {s['within_one_se']}")
  if args.out:
    common.write_json(args.out, {"rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
