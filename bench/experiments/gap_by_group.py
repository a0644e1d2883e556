"""Where two trained runs differ, user by user (the claims issue: generative against SASRec).
Each workdir's best checkpoint ranks the split's users as `jaxrec.evaluate` does; the users
are then grouped three ways, and per group every run's R@10 / N@10 is given with its paired
difference to the first run (mean over the group's users +- its standard error):

  target popularity   how often the target item occurs in the training part of the
                      sequences (each user's items but the last two: leave-one-out), in
                      quartiles of the split's targets (items never seen in training apart)
  history length      the user's history before the target, in quartiles
  last input          the training occurrences of the last history item the run reads
  transition          the target repeats an earlier item of the user's sequence; or it is
                      new and the (last input, target) pair occurs as consecutive items in
                      the training part (a step a model can have memorised); or neither

For a run over semantic IDs, also per group: prefix@10 at each level l, the share of users
whose top 10 holds an item with the target's first l codes (l = 1 .. C - 1; the region of
the catalogue found, against the item itself found: R@10). A run over item IDs (SASRec) is
measured against the first listed run's codes that has them, so the two find regions of
the same map. And per group, how popular each run's recommendations are: the median, over
the group's users, of the mean training occurrences of their top 10 (popularity bias), and
the share of the top 10 that no training sequence holds (items a model can only rank from
what it shares with others), the share the user already had (items of its sequence
before the target: what a model that memorises its training sequences lists again), and
the share of users whose top 10 holds their last input item (a copy of it).

The reading it was built to test (refuted, bench/README.md): on a small catalogue an
item-ID model (SASRec) learns every item's own embedding well enough that semantic IDs'
sharing brings nothing. If so, a generative run's deficit sits on the popular targets and
shrinks (or turns) on the rare ones, whose own embeddings are learnt from few interactions.

  JAXREC_DATA_DIR=../shared/data python -m bench.experiments.gap_by_group \\
      /work/runs/quality/sasrec-scientific-paper-seed0 \\
      /work/runs/quality/tiger-scientific-paper-seed0 --out gap.json

`--markov`: a first-order Markov chain beside the runs, no training: the last history
item's successors counted over the training part (each user's consecutive pairs before its
last two items), ties broken by training popularity; how much of the split an item-to-item
transition table explains. With no workdirs, `--markov --data METHOD:VARIANT` gives the
chain alone on that config's data set (validation and test R@5 / R@10 / N@5 / N@10):

  JAXREC_DATA_DIR=../shared/data python -m bench.experiments.gap_by_group --markov \\
      --data tiger:letter_ids_paper

`--drop-valid`: the test users' histories without their validation item (the target is then
two steps after the history): whether test is harder for its last input or for its target.

`--last N`: every trained run reads only each user's last N history items (the same users,
groups and targets): how much of a run's score the longer history carries.

`--other-user`: every trained run reads each user's history with the next user's row as its
user, so a run with a hashed user token (TIGER's) reads another user's token: how much of
what a run lists (its own items, the repeats it finds) the per-user token carries.

The runs must share a data set (checked: same users, same targets). Nothing is written to
the workdirs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys

if not __package__:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

from jaxrec.data import leave_one_out, training_interactions  # noqa: E402
from jaxrec.pipeline import load_run  # noqa: E402
from jaxrec.training.evaluation import evaluate_split  # noqa: E402

K = 10


def without_valid_item(ds):
  """`ds` with each user's second-to-last item (the validation target) removed: its test
  split then predicts the last item from the history before the validation item."""
  keep = np.ones(len(ds.items_I), bool)
  keep[ds.offsets_U1[1:] - 2] = False
  offsets = ds.offsets_U1 - np.arange(len(ds.offsets_U1))
  return dataclasses.replace(ds, items_I=ds.items_I[keep], offsets_U1=offsets)


def per_user(workdir: str, split: str, last: int = 0, drop_valid: bool = False,
             other_user: bool = False) -> dict:
  """{user index: (target, 1-based rank or 0 when not ranked, top K items)}, the split's
  reported metrics, the run's data set and its code table (numpy [N, C], None for SASRec).
  `last`: histories cut to their last `last` items; `drop_valid`: the test histories
  without the validation item; `other_user`: each history read with the next user's row
  (u + 1, wrapping) as its user, so a hashed user token is another user's (a bucket other
  than u's wherever there are 2 buckets or more, but for the last user's at most)."""
  run, params, _ = load_run(workdir)
  dataset = run.dataset
  if drop_valid:
    run.dataset = without_valid_item(dataset)
  if last or drop_valid:
    run.splits = leave_one_out(run.dataset, last or run.cfg.data.max_len)
  shift = 1 if other_user else 0
  if shift:
    s = run.splits[split]
    run.splits = {**run.splits, split: dataclasses.replace(
        s, user_S=((s.user_S + shift) % dataset.n_users).astype(np.int32))}
  out = {}

  def hook(batch, items):
    for row in range(len(batch["weight_B"])):
      if batch["weight_B"][row] <= 0:
        continue
      target = int(batch["target_B"][row])
      ranked = [int(i) for i in items[row]]
      rank = ranked.index(target) + 1 if target in ranked else 0
      out[(int(batch["user_B"][row]) - shift) % dataset.n_users] = (target, rank, ranked[:K])

  reported = evaluate_split(run, params, split, on_batch=hook)
  codes = None if run.codes is None else np.asarray(run.codes)
  return {"users": out, "reported": reported, "dataset": dataset, "codes": codes}


def prefix_hits(run: dict, users: list, codes: np.ndarray) -> np.ndarray:
  """[users, C - 1]: whether the user's top K holds an item sharing the target's first
  l + 1 codes of `codes` [N, C]."""
  out = np.zeros((len(users), codes.shape[1] - 1), bool)
  for i, u in enumerate(users):
    target, _, top = run["users"][u]
    top = [t for t in top if t >= 0]
    if top:
      same = np.cumprod(codes[top] == codes[target], axis=1).astype(bool)   # [K, C]
      out[i] = same[:, :-1].any(axis=0)
  return out


def train_popularity(ds) -> np.ndarray:
  """Occurrences of each item in every user's sequence but its last two items."""
  return np.bincount(ds.items_I[training_interactions(ds)], minlength=ds.n_items)


def training_pairs(ds) -> tuple[np.ndarray, np.ndarray]:
  """(a, b): every pair of consecutive items in the training part (each user's consecutive
  pairs before its last two items)."""
  keep = training_interactions(ds)
  pair = keep[:-1] & keep[1:]           # a user's last item is never kept: no pair spans users
  return ds.items_I[:-1][pair], ds.items_I[1:][pair]


def markov_run(ds, split: str) -> dict:
  """`per_user`'s result for the first-order Markov chain over `ds`'s training part."""
  import scipy.sparse as sp
  counts = train_popularity(ds)
  a, b = training_pairs(ds)
  table = sp.csr_matrix((np.ones(len(a)), (a, b)), shape=(ds.n_items, ds.n_items))
  tie = counts / (counts.max() + 1.0)            # below one transition: breaks ties only
  back = 1 if split == "test" else 2
  out = {}
  for u in range(ds.n_users):
    end = int(ds.offsets_U1[u + 1]) - back
    last, target = int(ds.items_I[end - 1]), int(ds.items_I[end])
    score = table.getrow(last).toarray()[0] + tie
    ranked = np.argsort(-score, kind="stable")[:20].tolist()
    out[u] = (target, ranked.index(target) + 1 if target in ranked else 0, ranked[:K])
  return {"users": out, "reported": None, "dataset": ds, "codes": None}


def chain_alone(spec: str) -> None:
  """Prints the Markov chain's validation and test metrics on a config's data set."""
  from jaxrec.config import get_config
  from jaxrec.data import load_dataset
  method, _, variant = spec.partition(":")
  ds = load_dataset(get_config(method, variant or "default").data)
  print(f"{ds.name}: {ds.n_users} users, {ds.n_items} items, {ds.n_interactions} interactions")
  for split in ("valid", "test"):
    ranks = np.array([r[1] for r in markov_run(ds, split)["users"].values()])
    cells = [f"R@{k} {rec.mean():.4f} N@{k} {ndcg.mean():.4f}"
             for k, (rec, ndcg) in ((k, hits(ranks, k)) for k in (5, 10))]
    print(f"markov {split}: " + ", ".join(cells))


def split_context(ds, users: np.ndarray, split: str, dropped: int = 0) -> tuple:
  """Per user of `users` (indices), from the data set alone: the split's target, the history
  length before it, the last input item and the set of the user's items the history holds
  (`dropped` 1: the test histories without the validation item, --drop-valid)."""
  back = 1 if split == "test" else 2
  ends = ds.offsets_U1[users + 1] - back                 # each target's position
  history = ds.lengths_U[users] - back - dropped
  own = [set(ds.items_I[ds.offsets_U1[u]:e - dropped].tolist()) for u, e in zip(users, ends)]
  return ds.items_I[ends], history, ds.items_I[ends - 1 - dropped], own


def transition_groups(ds, targets, last_input, own) -> list:
  """[(label, mask)] over the users, disjoint: the target repeats an item of their sequence
  before it (`own`: each user's set of those items); a new target whose (last input,
  target) pair occurs among the training part's consecutive pairs; a new target after an
  unseen step."""
  a, b = training_pairs(ds)
  seen = np.isin(np.asarray(last_input, np.int64) * ds.n_items + targets,
                 a.astype(np.int64) * ds.n_items + b)
  repeat = np.array([int(t) in o for t, o in zip(targets, own)])
  return [("target repeats", repeat), ("new, step seen", ~repeat & seen),
          ("new, step unseen", ~repeat & ~seen)]


def quartile_groups(values: np.ndarray, name: str, zero_apart: bool) -> list:
  """[(label, mask)] over the users: `values` cut at its quartiles (0 a group of its own
  first when `zero_apart`), each group labelled with its smallest and largest value."""
  zero = (values == 0) if zero_apart else np.zeros(len(values), bool)
  rest = values[~zero]
  edges = np.unique(np.quantile(rest, [0.25, 0.5, 0.75]))
  bins = np.where(zero, -1, np.searchsorted(edges, values, side="left"))
  groups = []
  for b in np.unique(bins):
    mask = bins == b
    groups.append((f"{name} {int(values[mask].min())}-{int(values[mask].max())}", mask))
  return groups


def hits(ranks: np.ndarray, k: int = K) -> tuple[np.ndarray, np.ndarray]:
  """Per-user recall@k and NDCG@k from 1-based ranks (0: not ranked)."""
  inside = (ranks >= 1) & (ranks <= k)
  ndcg = np.where(inside, 1.0 / np.log2(np.maximum(ranks, 1) + 1), 0.0)
  return inside.astype(np.float64), ndcg


def mean_se(x: np.ndarray) -> tuple[float, float]:
  return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("workdirs", nargs="*", help="trained runs; the first is the reference")
  p.add_argument("--data", default="", help="with no workdirs and --markov: the chain alone "
                 "on this config's data set (METHOD:VARIANT)")
  p.add_argument("--split", default="test", choices=("valid", "test"))
  p.add_argument("--out", default="", help="write the table as JSON here")
  p.add_argument("--markov", action="store_true", help="add a first-order Markov chain "
                 "(training counts) as a last column")
  p.add_argument("--drop-valid", action="store_true", help="test histories without the "
                 "validation item (the target two steps after the history)")
  p.add_argument("--last", type=int, default=0, help="read only each user's last N history "
                 "items (0: the runs' own max_len)")
  p.add_argument("--other-user", action="store_true", help="every run reads each history "
                 "with the next user's row as its user (another user's hashed token)")
  args = p.parse_args(argv)
  if not args.workdirs:
    if not (args.markov and args.data):
      p.error("give trained workdirs, or --markov --data METHOD:VARIANT for the chain alone")
    return chain_alone(args.data)

  if args.drop_valid and (args.split != "test" or args.markov):
    p.error("--drop-valid: the test split only, without --markov")
  runs = [per_user(w, args.split, args.last, args.drop_valid, args.other_user)
          for w in args.workdirs]
  users = sorted(runs[0]["users"])
  for w, r in zip(args.workdirs, runs):
    same = sorted(r["users"]) == users and all(r["users"][u][0] == runs[0]["users"][u][0]
                                               for u in users)
    if not same:
      raise SystemExit(f"{w}: its {args.split} users or targets differ from "
                       f"{args.workdirs[0]}'s (the runs must share a data set)")
  ds = runs[0]["dataset"]
  names = [os.path.basename(os.path.normpath(w)) for w in args.workdirs]
  if args.markov:
    runs.append(markov_run(ds, args.split))
    names.append("markov-last-item")
  targets, history, last_input, own = split_context(ds, np.array(users), args.split,
                                                   1 if args.drop_valid else 0)
  assert [runs[0]["users"][u][0] for u in users] == targets.tolist()   # (the runs' targets)
  counts = train_popularity(ds)
  pop = counts[targets]
  groups = ([("all", np.ones(len(users), bool))] + quartile_groups(pop, "popularity", True)
            + quartile_groups(history, "history", False)
            + quartile_groups(counts[last_input], "last input", True)
            + transition_groups(ds, targets, last_input, own))
  per = [hits(np.array([r["users"][u][1] for u in users])) for r in runs]
  tops = [[[t for t in r["users"][u][2] if t >= 0] for u in users] for r in runs]
  top_pop = [np.array([counts[t].mean() if t else np.nan for t in top]) for top in tops]
  top_unseen = [np.array([np.mean(counts[t] == 0) if t else 0.0 for t in top]) for top in tops]
  top_own = [np.array([np.mean([x in o for x in t]) if t else 0.0 for t, o in zip(top, own)])
             for top in tops]
  top_last = [np.array([x in t for x, t in zip(last_input, top)]) for top in tops]
  coded = [r["codes"] for r in runs if r["codes"] is not None]
  prefixes = [prefix_hits(r, users, r["codes"] if r["codes"] is not None else coded[0])
              if coded else None for r in runs]

  table = []
  for w, r, (rec, ndcg) in zip(names, runs, per):   # the grouping reproduces the run's figures
    rep = r["reported"]
    print(f"{w}: " + (f"reported R@{K} {rep[f'recall@{K}']:.4f} N@{K} {rep[f'ndcg@{K}']:.4f}; "
                      "recomputed " if rep else "") +
          f"{rec.mean():.4f} / {ndcg.mean():.4f} ({len(rec)} users)")
  print(f"\n{'group':<22}{'users':>6}  " + "  ".join(f"{n[:28]:>28}" for n in names))
  for label, mask in groups:
    row = {"group": label, "users": int(mask.sum()), "runs": {}}
    cells = []
    for i, (name, (rec, ndcg)) in enumerate(zip(names, per)):
      cell = {"recall": float(rec[mask].mean()), "ndcg": float(ndcg[mask].mean()),
              "top_popularity": float(np.median(top_pop[i][mask])),
              "top_unseen": float(top_unseen[i][mask].mean()),
              "top_own": float(top_own[i][mask].mean()),
              "top_last": float(top_last[i][mask].mean())}
      if i:
        cell["recall_diff"], cell["recall_diff_se"] = mean_se(rec[mask] - per[0][0][mask])
        cell["ndcg_diff"], cell["ndcg_diff_se"] = mean_se(ndcg[mask] - per[0][1][mask])
        cells.append(f"{cell['recall']:.4f} "
                     f"({cell['recall_diff']:+.4f}+-{cell['recall_diff_se']:.4f})")
      else:
        cells.append(f"{cell['recall']:.4f}")
      if prefixes[i] is not None:
        cell["prefix"] = [float(x) for x in prefixes[i][mask].mean(axis=0)]
      row["runs"][name] = cell
    table.append(row)
    print(f"{label:<22}{row['users']:>6}  " + "  ".join(f"{c:>28}" for c in cells))
  print(f"(R@{K}; in brackets the paired difference to {names[0]} +- its standard error over "
        "the group's users)")
  for key, fmt, title in (
      ("top_popularity", "8.1f", "median over users of the mean training occurrences of "
                                 f"the top {K}"),
      ("top_unseen", "8.4f", f"share of the top {K} never in the training part"),
      ("top_own", "8.4f", f"share of the top {K} the user already had (items of its sequence "
                          "before the target)"),
      ("top_last", "8.4f", f"share of the users whose top {K} holds their last input item "
                           "(a copy of it)")):
    print(f"\n{title}:")
    for row in table:
      print(f"  {row['group']:<22}" + " ".join(f"{row['runs'][n][key]:{fmt}}" for n in names))
  for i, name in enumerate(names):
    if prefixes[i] is not None:
      whose = "its own codes" if runs[i]["codes"] is not None else "the first coded run's codes"
      print(f"\n{name}: prefix@{K} at levels 1..{prefixes[i].shape[1]} ({whose}), then R@{K}")
      for row in table:
        cell = row["runs"][name]
        print(f"  {row['group']:<22}" + " ".join(f"{x:.4f}" for x in cell["prefix"])
              + f" | {cell['recall']:.4f}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"split": args.split, "k": K, "last": args.last,
                 "drop_valid": args.drop_valid, "other_user": args.other_user,
                 "workdirs": args.workdirs,
                 "groups": table}, f, indent=1)


if __name__ == "__main__":
  main()
