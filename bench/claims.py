"""The seed papers' claims as paired comparisons over seeds, from the runs `bench/quality.py`
left in a workdir (each seed's `results.json`; unfinished runs are skipped).

A claim compares a candidate row with a baseline row (`method:variant[,key=value...]`, as
quality.py names rows): for every seed both have finished, the difference of each test
metric (candidate minus baseline: same data, recommender, budget rule and seed); the table
gives the mean difference, its standard error over the seeds (sample std / sqrt(n)), the
relative change of the means, and a verdict: "holds" when the mean difference is positive
and at least 2 standard errors, "fails" when negative by as much, "not resolved" in between,
"one seed" when there is no standard error yet. `--tables` reads the rows from quality.py's
result files instead (their per-seed test metrics), e.g. the earlier 40-epoch Scientific rows.

  python -m bench.claims --workdir /work/runs/quality --name paper --ablations
  python -m bench.claims --workdir W --name paper --variant scientific \\
      --pair "siit:scientific,siit.rounds=0" siit:scientific

  python -m bench.claims --variant scientific --name scientific-cap40 \\
      --tables bench/results/quality-scientific*.json

`--groups` adds each pair's difference by what the test target is to the user (it repeats
an item of the user's sequence; it is new after a step the training part holds; new after an
unseen step: bench/experiments/gap_by_group.py), from the ranks bench/quality.py keeps for
every finished run (bench/results/ranks/<workdir name>.npz; `--ranks DIR`):

  JAXREC_DATA_DIR=../shared/data python -m bench.claims --name paper --variant scientific \\
      --tables bench/results/quality-scientific-paper-*-s*.json --groups \\
      --gap_tables bench/results/gap-by-group-scientific-seed1-patience15-rows-test.json

(`--gap_tables`: gap_by_group's tables give the group means of runs whose workdirs were lost
before their ranks were kept, here seed 1's; a seed read from them has no per-user SE.)

Results: `bench/results/claims-<name>.{md,json}` (or --out).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

if not __package__:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402
from bench.quality import (METRICS, apply_overrides, parse_override, per_seed_rows,  # noqa: E402
                           run_tag, split_spec)

# ETEGRec's variant runs the official recipe (batch 2,048, lr 5e-3: about 7 recommender updates
# an epoch on Scientific); with TIGER's batch and lr its validation NDCG@10 passed the
# official recipe's best (.0592) at epoch 28 of the alternation and went on climbing
# (bench/README.md): the row chosen on validation, behind the claims beside the variant as it
# is and behind ETEGRec's ablations
ETEGREC_CHOSEN = "etegrec,train.batch_size=256,train.accumulate=1,train.lr=0.0005"
# SimCIT's variant trains with a noise-free softmax that is about uniform at its distances
# (bench/README.md, SimCIT: how soft its codes train); with the released noise-to-temperature
# ratio at 1 % of the scale its seed 1 reached valid NDCG@10 .1034 against .1019: the row
# chosen on validation (one seed so far), behind SimCIT's claims beside the variant as it is
SIMCIT_CHOSEN = "simcit,tokenizer.simcit.gumbel_tau=0.002,tokenizer.simcit.gumbel_scale=0.01"

# (paper, its claim, candidate, baseline, the paper's relative R@10 gain or None); candidate and
# baseline are `method[,key=value...]`, the variant put after the method (`row`)
CLAIMS = (
    ("LETTER", "its IDs beat TIGER's RQ-VAE IDs with the same recommender", "letter", "tiger", .06),
    ("ETEGRec", "end-to-end training beats TIGER", "etegrec", "tiger", .09),
    ("ETEGRec", "end-to-end training beats TIGER (TIGER's batch and lr, chosen on validation)",
     ETEGREC_CHOSEN, "tiger", .09),
    ("ETEGRec", "end-to-end training beats LETTER", "etegrec", "letter", .07),
    ("ETEGRec", "end-to-end training beats LETTER (TIGER's batch and lr, chosen on validation)",
     ETEGREC_CHOSEN, "letter", .07),
    ("SIIT", "refining the IDs during training beats the initial tokenization", "siit", "tiger",
     .08),
    ("SIIT", "refining the IDs beats the same model and task on the initial IDs (no rounds)",
     "siit", "siit,siit.rounds=0", .08),
    ("SimCIT", "contrastive IDs beat reconstruction IDs", "simcit", "tiger", None),
    ("SimCIT", "contrastive IDs beat reconstruction IDs (sharp soft codes, chosen on validation)",
     SIMCIT_CHOSEN, "tiger", None),
    ("TIGER", "generative retrieval beats SASRec", "tiger", "sasrec", None),
    ("LETTER", "LETTER-TIGER beats SASRec", "letter", "sasrec", None),
    ("ETEGRec", "beats traditional sequential recommenders (SASRec)", "etegrec", "sasrec", None),
    ("ETEGRec", "beats SASRec (TIGER's batch and lr, chosen on validation)", ETEGREC_CHOSEN,
     "sasrec", None),
    ("SIIT", "beats SASRec", "siit", "sasrec", None),
    ("SimCIT", "beats SASRec", "simcit", "sasrec", None),
    ("SimCIT", "beats SASRec (sharp soft codes, chosen on validation)", SIMCIT_CHOSEN, "sasrec",
     None),
)


# (what the ablation changes, its method, its overrides, the baseline row's method and
# overrides): each ablation against its full method, rows as the claims queue names them
# (`--ablations`)
ABLATIONS = (
    ("LETTER without L_cf", "letter", ",tokenizer.letter.alpha=0.0", "letter"),
    ("LETTER without L_div", "letter", ",tokenizer.letter.beta=0.0", "letter"),
    ("LETTER without L_cf and L_div, against TIGER (its tokenizer settings alone)", "letter",
     ",tokenizer.letter.alpha=0.0,tokenizer.letter.beta=0.0", "tiger"),
    ("LETTER with every level hard, against TIGER", "letter",
     ",tokenizer.modes=('hard','hard','hard')", "tiger"),
    ("LETTER in the official shape (3 hard levels, a balanced 4th), against TIGER", "letter",
     ",tokenizer.levels=4,tokenizer.modes=('hard','hard','hard','sinkhorn')", "tiger"),
    ("LETTER with TIGER's collision level (no Sinkhorn re-assignment), against TIGER",
     "letter", ",tokenizer.collision=suffix", "tiger"),
    ("SIIT: the alignment weighed 4x (the earlier loss)", "siit", ",siit.align_loss=sum", "siit"),
    ("SIIT: movers to any free ID, however low (the rule before 2026-12-06)", "siit",
     ",siit.movers=any", "siit"),
    ("SIIT: one late round, keep margin 2", "siit",
     ",siit.first_refine=40,siit.rounds=1,siit.keep_margin=2.0", "siit"),
    ("SIIT: from random IDs, against TIGER from random IDs", "siit", ",tokenizer.source=random",
     "tiger,tokenizer.source=random"),
    ("SIIT: the alignment reads cf (interactions), not the tokenizer's input", "siit",
     ",siit.feature=cf", "siit"),
    ("SIIT: a smaller alignment share (0.1)", "siit", ",siit.align_ratio=0.1", "siit"),
    ("SIIT from RQ-KMeans IDs on cf, against TIGER from the same", "siit",
     ",tokenizer.source=rqkmeans,tokenizer.feature=cf",
     "tiger,tokenizer.source=rqkmeans,tokenizer.feature=cf"),
    ("TIGER from random IDs", "tiger", ",tokenizer.source=random", "tiger"),
    ("TIGER with 5 evaluations of patience (10 epochs; the rule before 2026-12-06) instead of 15",
     "tiger", ",train.patience=5", "tiger"),
    ("TIGER kept at the lowest valid loss (LETTER-TIGER's official rule) instead of the best "
     "valid NDCG@10", "tiger", ",train.select=loss", "tiger"),
    ("LETTER against TIGER, both kept at the lowest valid loss (LETTER-TIGER's official rule)",
     "letter", ",train.select=loss", "tiger,train.select=loss"),
    ("TIGER from RQ-KMeans IDs on cf (a collaborative start)", "tiger",
     ",tokenizer.source=rqkmeans,tokenizer.feature=cf", "tiger"),
    ("SimCIT: the text view alone", SIMCIT_CHOSEN, ",tokenizer.simcit.views=('text',)",
     SIMCIT_CHOSEN),
    ("SimCIT's objective on the text view alone, against TIGER (its RQ-VAE on text)",
     SIMCIT_CHOSEN, ",tokenizer.simcit.views=('text',)", "tiger"),
    ("SimCIT: the cf view alone", SIMCIT_CHOSEN, ",tokenizer.simcit.views=('cf',)", SIMCIT_CHOSEN),
    ("SimCIT: a reconstruction loss added", SIMCIT_CHOSEN, ",tokenizer.simcit.w_recon=1.0",
     SIMCIT_CHOSEN),
    ("SimCIT: soft codes as sharp as the released ones (gumbel_tau .002, noise .01)", "simcit",
     ",tokenizer.simcit.gumbel_tau=0.002,tokenizer.simcit.gumbel_scale=0.01", "simcit"),
    ("SimCIT: the fit at TIGER's 300 epochs (cut short)", "simcit", ",tokenizer.epochs=300",
     "simcit"),
    ("SimCIT: the released checkpoint choice", SIMCIT_CHOSEN, ",tokenizer.simcit.holdout=0.1",
     SIMCIT_CHOSEN),
    ("TIGER's RQ-VAE on text + cf (SimCIT's information)", "tiger", ",tokenizer.feature=text+cf",
     "simcit"),
    ("TIGER's RQ-VAE on text + cf, against SimCIT's chosen row", "tiger",
     ",tokenizer.feature=text+cf", SIMCIT_CHOSEN),
    ("ETEGRec: the tokenizer frozen (the official recipe)", "etegrec",
     ",etegrec.alternation=frozen", "etegrec"),
    ("ETEGRec without SIA", ETEGREC_CHOSEN, ",etegrec.w_sia=0.0", ETEGREC_CHOSEN),
    ("ETEGRec without PSA", ETEGREC_CHOSEN, ",etegrec.w_psa=0.0", ETEGREC_CHOSEN),
    ("ETEGRec: both models every step", ETEGREC_CHOSEN, ",etegrec.alternation=joint",
     ETEGREC_CHOSEN),
    ("ETEGRec: the tokenizer frozen", ETEGREC_CHOSEN, ",etegrec.alternation=frozen",
     ETEGREC_CHOSEN),
    ("ETEGRec's recommender alone (the tokenizer frozen, no SIA, no PSA)", ETEGREC_CHOSEN,
     ",etegrec.alternation=frozen,etegrec.w_sia=0.0,etegrec.w_psa=0.0", ETEGREC_CHOSEN),
    ("ETEGRec with TIGER's batch and learning rate (8x the updates)", "etegrec",
     ",train.batch_size=256,train.accumulate=1,train.lr=0.0005", "etegrec"),
    ("ETEGRec with the official 8,000-step warm-up (never ends on this set)", "etegrec",
     ",etegrec.warmup_frac=0.0", "etegrec"),
)


def row(head: str, variant: str) -> str:
  """`method[,key=value...]` -> the row quality.py names `method:variant[,key=value...]`."""
  method, _, rest = head.partition(",")
  return f"{method}:{variant}" + (f",{rest}" if rest else "")


def claim_pairs(variant: str) -> list:
  """CLAIMS as compare()'s pairs for one variant."""
  return [(paper, claim, row(c, variant), row(b, variant), gain)
          for paper, claim, c, b, gain in CLAIMS]


def ablation_pairs(variant: str) -> list:
  """ABLATIONS as compare()'s pairs for one variant."""
  return [("", what, row(c, variant) + suffix, row(b, variant), None)
          for what, c, suffix, b in ABLATIONS]


def seed_results(root: str, spec: str, name: str, max_seeds: int = 100) -> dict:
  """{seed: results.json} of the row's finished seeds."""
  out = {}
  for seed in range(max_seeds):
    path = os.path.join(root, run_tag(spec, name, seed), "results.json")
    if os.path.exists(path):
      with open(path) as f:
        out[seed] = json.load(f)
  return out


def constrained_test(results: dict) -> dict:
  """The test metrics with constrained decoding, as every row decodes: a run that decoded
  free (ETEGRec's official protocol) also reports them as `test_constrained`."""
  return results.get("test_constrained", results["test"])


def paired(cand: dict, base: dict, metrics=METRICS) -> dict:
  """Paired differences over the seeds both rows have: per metric the mean difference, its
  standard error (None with one seed), the relative change of the means and a verdict; test
  metrics with constrained decoding (`constrained_test`)."""
  seeds = sorted(set(cand) & set(base))
  out = {"seeds": seeds, "metrics": {}}
  for k in metrics if seeds else ():
    c = np.array([constrained_test(cand[s])[k] for s in seeds], float)
    b = np.array([constrained_test(base[s])[k] for s in seeds], float)
    d = c - b
    se = float(np.std(d, ddof=1) / math.sqrt(len(d))) if len(d) > 1 else None
    mean = float(d.mean())
    if se is None:
      verdict = "one seed"
    elif se == 0.0:
      verdict = "holds" if mean > 0 else "fails" if mean < 0 else "not resolved"
    else:
      verdict = "holds" if mean >= 2 * se else "fails" if mean <= -2 * se else "not resolved"
    out["metrics"][k] = {"candidate": float(c.mean()), "baseline": float(b.mean()),
                         "diff": mean, "se": se, "per_seed": [round(float(x), 5) for x in d],
                         "relative": float(c.mean() / b.mean() - 1) if b.mean() else None,
                         "verdict": verdict}
  return out


def word(row, verdict: str) -> str:
  """A control or ablation has no claim to hold: its candidate is ahead of or behind."""
  if row["paper"]:
    return verdict
  return {"holds": "ahead", "fails": "behind"}.get(verdict, verdict)


def table(rows) -> str:
  head = ("| paper | claim | candidate | baseline | seeds | R@10 cand / base | R@10 diff +- SE "
          "| relative (paper) | N@10 diff +- SE | relative | verdict R@10 / N@10 |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in rows:
    m = r["metrics"]
    if not m:
      lines.append(f"| {r['paper']} | {r['claim']} | `{r['candidate']}` | `{r['baseline']}` | "
                   "none finished | | | | | | |")
      continue

    def diff(k):
      se = m[k]["se"]
      return f"{m[k]['diff']:+.4f}" + (f" +- {se:.4f}" if se is not None else "")

    def rel(k):
      return f"{m[k]['relative']:+.1%}" if m[k]["relative"] is not None else ""
    paper = f" ({r['paper_gain']:+.0%})" if r["paper_gain"] is not None else ""
    r10 = m["recall@10"]
    lines.append(
        f"| {r['paper']} | {r['claim']} | `{r['candidate']}` | `{r['baseline']}` | "
        f"{', '.join(map(str, r['seeds']))} | {r10['candidate']:.4f} / {r10['baseline']:.4f} | "
        f"{diff('recall@10')} | {rel('recall@10')}{paper} | {diff('ndcg@10')} | {rel('ndcg@10')} | "
        f"{word(r, r10['verdict'])} / {word(r, m['ndcg@10']['verdict'])} |")
  return "\n".join(lines)


def compare(results, pairs) -> list:
  """`results(spec)` -> {seed: results}; `pairs`: (paper, claim, candidate spec, baseline
  spec, paper gain) -> rows."""
  rows = []
  for paper, claim, cand, base, gain in pairs:
    res = paired(results(cand), results(base))
    rows.append({"paper": paper, "claim": claim, "candidate": cand, "baseline": base,
                 "paper_gain": gain, **res})
  return rows


def rank_path(ranks_dir: str, spec: str, name: str, seed: int) -> str:
  """Where bench/quality.py keeps a run's ranks.npz (`keep_ranks`)."""
  return os.path.join(ranks_dir, run_tag(spec, name, seed) + ".npz")


def split_ranks(path: str, split: str) -> np.ndarray:
  """A kept ranks.npz's ranks of a split; a run that decoded free (ETEGRec's official
  protocol) also keeps its constrained test ranks (`test_constrained`), read instead, as
  `constrained_test` reads its metrics."""
  with np.load(path) as f:
    return f["test_constrained"] if split == "test" and "test_constrained" in f.files else f[split]


def spec_dataset(spec: str, cache: dict):
  """The data set a row's runs read (its config's data, overrides applied), loaded once."""
  from jaxrec.config import get_config
  from jaxrec.data import load_dataset
  head, *own = split_spec(spec)
  method, _, variant = head.partition(":")
  cfg = get_config(method, variant or "default")
  apply_overrides(cfg, [parse_override(o) for o in own])
  key = cfg.data.to_json()
  if key not in cache:
    cache[key] = load_dataset(cfg.data)
  return cache[key]


# by_group's groups: every user, then gap_by_group's transition groups (disjoint)
GROUPS = ("all", "target repeats", "new, step seen", "new, step unseen")


def gap_tables(paths, split: str) -> dict:
  """{run tag: {group: (R@10, N@10, users)}} from gap_by_group's JSON tables of `split`
  (its plain runs: no --last, --drop-valid or --other-user), for seeds whose workdirs were
  lost before their ranks were kept (each workdir's name is its run's tag)."""
  out = {}
  for path in paths:
    with open(path) as f:
      t = json.load(f)
    if t["split"] != split or t.get("last") or t.get("drop_valid") or t.get("other_user"):
      continue
    for w in t["workdirs"]:
      tag = os.path.basename(os.path.normpath(w))
      out[tag] = {g["group"]: (g["runs"][tag]["recall"], g["runs"][tag]["ndcg"], g["users"])
                  for g in t["groups"] if tag in g["runs"] and g["group"] in GROUPS}
  return out


def rank_groups(path: str, ds, split: str) -> tuple:
  """(users, {group: (per-user R@10, per-user N@10)}) of a kept ranks file: every user the
  split evaluates, then gap_by_group's transition groups."""
  from bench.experiments.gap_by_group import hits, split_context, transition_groups
  r = split_ranks(path, split)
  if len(r) != ds.n_users:
    raise SystemExit(f"{path}: {len(r)} users, its row's data set {ds.n_users}")
  users = np.flatnonzero(r >= 0)
  targets, _, last, own = split_context(ds, users, split)
  groups = [("all", np.ones(len(users), bool))] + transition_groups(ds, targets, last, own)
  rec, ndcg = hits(r[users].astype(np.int64))
  return users, {label: (rec[mask], ndcg[mask]) for label, mask in groups}


def by_group(pairs, ranks_dir: str, name: str, split: str = "test", tables=None) -> list:
  """Each pair's difference split by what the target is to the user (gap_by_group's
  transition groups: it repeats an item of the user's sequence; it is new after a step the
  training part holds; new after an unseen step), over every seed both rows have: per group
  the mean over seeds of the candidate's and the baseline's R@10 / N@10 and of their
  difference, with its standard error over the seeds (one seed: over the group's users,
  paired). A seed's run is read from its kept ranks (test ranks with constrained decoding,
  as every row decodes: `split_ranks`), else from `tables` (`gap_tables`: the group means
  alone)."""
  from bench.experiments.gap_by_group import mean_se
  tables = tables or {}
  datasets, rows = {}, []
  for paper, claim, cand, base, _ in pairs:
    cells, seeds = {}, []
    for seed in range(100):
      got = []
      for x in (cand, base):
        path, tag = rank_path(ranks_dir, x, name, seed), run_tag(x, name, seed)
        if os.path.exists(path):
          ds = spec_dataset(base, datasets)
          got.append((path, *rank_groups(path, ds, split)))
        elif tag in tables:
          got.append((tag, None, tables[tag]))
      if len(got) < 2:
        continue
      seeds.append(seed)
      (where_c, users_c, g_c), (where_b, users_b, g_b) = got
      if users_c is not None and users_b is not None and not np.array_equal(users_c, users_b):
        raise SystemExit(f"{where_c}: its {split} users differ from {where_b}'s (one data set?)")
      for label in [k for k in g_b if k in g_c]:   # (an older gap table: "all" alone)
        mean = [(float(v[0].mean()), float(v[1].mean()), len(v[0])) if users is not None else v
                for users, v in ((users_c, g_c[label]), (users_b, g_b[label]))]
        if mean[0][2] != mean[1][2]:
          raise SystemExit(f"{where_c} and {where_b}: {mean[0][2]} and {mean[1][2]} users in "
                           f"the group '{label}' (one data set?)")
        paired = users_c is not None and users_b is not None
        c = cells.setdefault(label, {"users": mean[1][2], "per_seed": []})
        c["per_seed"].append({
            "seed": seed, "candidate": list(mean[0][:2]), "baseline": list(mean[1][:2]),
            "user_se": [mean_se(g_c[label][i] - g_b[label][i])[1] for i in (0, 1)]
            if paired else None})
    for label, c in cells.items():
      cand_m = np.mean([x["candidate"] for x in c["per_seed"]], axis=0)
      base_m = np.mean([x["baseline"] for x in c["per_seed"]], axis=0)
      d = np.array([np.subtract(x["candidate"], x["baseline"]) for x in c["per_seed"]])
      if len(d) > 1:
        se, over = d.std(axis=0, ddof=1) / math.sqrt(len(d)), "seeds"
      else:
        se, over = c["per_seed"][0]["user_se"], "users"
      rows.append({"paper": paper, "claim": claim, "candidate": cand, "baseline": base,
                   "split": split, "group": label, "users": c["users"], "seeds": seeds,
                   "recall@10": [float(cand_m[0]), float(base_m[0])],
                   "ndcg@10": [float(cand_m[1]), float(base_m[1])],
                   "diff": [float(x) for x in d.mean(axis=0)],
                   "se": None if se is None else [float(x) for x in se],
                   "se_over": over, "per_seed": c["per_seed"]})
  return rows


def group_table(rows) -> str:
  head = ("| paper | claim | group | users | seeds | R@10 cand / base | R@10 diff +- SE "
          "| N@10 cand / base | N@10 diff +- SE |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in rows:
    seeds = ", ".join(map(str, r["seeds"]))
    if r["se_over"] == "users":
      seeds += " (SE over users)" if r["se"] is not None else " (no SE: group means only)"
    cells = [f"{r[k][0]:.4f} / {r[k][1]:.4f} | {r['diff'][i]:+.4f}"
             + (f" +- {r['se'][i]:.4f}" if r["se"] is not None else "")
             for i, k in enumerate(("recall@10", "ndcg@10"))]
    lines.append(f"| {r['paper']} | {r['claim']} | {r['group']} | {r['users']} | {seeds} | "
                 + " | ".join(cells) + " |")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default="runs/quality", help="quality.py's --workdir")
  p.add_argument("--name", default="", help="quality.py's --name")
  p.add_argument("--variant", default="scientific", help="the variant of the default claims")
  p.add_argument("--pair", nargs=2, action="append", default=[], metavar=("CANDIDATE", "BASELINE"),
                 help="one more comparison (rows as quality.py names them)")
  p.add_argument("--no_defaults", action="store_true", help="only the --pair comparisons")
  p.add_argument("--ablations", action="store_true",
                 help="also each queued ablation against its full method (ABLATIONS)")
  p.add_argument("--tables", nargs="+", default=None,
                 help="quality.py result files (.json) to read the rows from, not the workdir")
  p.add_argument("--out", default=None, help="output stem (default bench/results/claims-<name>)")
  p.add_argument("--groups", action="store_true",
                 help="also each pair's difference by target group (a repeat, a new item after "
                      "a seen step, after an unseen one), from the runs' kept ranks")
  p.add_argument("--ranks", default=os.path.join(common.RESULTS, "ranks"),
                 help="with --groups: where bench/quality.py keeps the runs' ranks.npz")
  p.add_argument("--split", default="test", choices=("valid", "test"),
                 help="with --groups: the split grouped")
  p.add_argument("--gap_tables", nargs="+", default=[],
                 help="with --groups: gap_by_group JSON tables giving the group means of runs "
                      "whose ranks were not kept (their workdirs lost first)")
  args = p.parse_args()
  pairs = [] if args.no_defaults else claim_pairs(args.variant)
  pairs += ablation_pairs(args.variant) if args.ablations else []
  pairs += [("", "control", c, b, None) for c, b in args.pair]
  if args.tables:
    found = per_seed_rows(args.tables)
    results = lambda spec: found.get(spec, {})
  else:
    results = lambda spec: seed_results(args.workdir, spec, args.name)
  rows = compare(results, pairs)
  md = table(rows)
  groups = (by_group(pairs, args.ranks, args.name, args.split,
                     gap_tables(args.gap_tables, args.split)) if args.groups else None)
  if groups is not None:
    md += f"\n\nBy target group ({args.split}, from {args.ranks}):\n\n" + group_table(groups)
  print(md)
  stem = common.result_path(f"claims-{args.name or args.variant}", args.out)
  common.write_json(stem + ".json", {"source": args.tables or args.workdir, "name": args.name,
                                     "rows": rows,
                                     **({"groups": groups} if groups is not None else {})})
  with open(stem + ".md", "w") as f:
    f.write(md + "\n")
  print(f"wrote {stem}.md and {stem}.json")


if __name__ == "__main__":
  main()
