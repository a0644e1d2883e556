"""What two or more code tables encode about the catalogue (the claims issue: LETTER's IDs
against TIGER's, and any other tokenizer's). For each run's semantic IDs (its `codes.npz`,
or `codes_final.npz` where training changed them; the appended collision level left out)
and each prefix length l, the share of item pairs that share their first l codes, over four
kinds of pairs:

  transitions   consecutive items of the training part of every user's sequence
                (leave-one-out: each user's items but the last two): the collaborative
                signal LETTER's cf term is meant to put into the IDs
  test step     each test user's last history item and its test target (what a
                recommender over these IDs has to cross); in both, repeats are dropped
  text nn       every item and its nearest other item by the cosine of its `text`
                features (the signal an RQ-VAE on text reconstructs)
  cf nn         the same by the run's `cf` features (the SASRec item embeddings
                LETTER aligns its codes with; derived in-run, as the runs derive them);
                with --data, by each feature the config loads

each beside its chance level, the share expected if the pairs' two items were drawn
independently from the same marginals (sum over groups of p_first * p_second), and the
lift (share / chance). Also per level: codes used, perplexity of the items' codes, the
largest group of items with one prefix; and, where the data set ships an ID table of its
own (`<data.dir>/<name>.index.json`, Scientific's publisher IDs), the normalised mutual
information (sqrt normalisation) of each prefix with its level-1 and level-1..2 groups.
`--data METHOD:VARIANT` measures such a shipped table itself (LETTER's published
Instruments IDs: `--data tiger:letter_ids_paper`, its nearest neighbours by the shipped
32-d SASRec embeddings, the only item features there).

  JAXREC_DATA_DIR=../shared/data python -m bench.experiments.id_quality \\
      /work/runs/quality/tiger-scientific-paper-seed1 \\
      /work/runs/quality/letter-scientific-paper-seed1 --out ids.json
  JAXREC_DATA_DIR=../shared/data python -m bench.experiments.id_quality --data tiger:letter_ids_paper

The runs must share a data set (checked). A `python -m jaxrec.tokenize` workdir (codes, no
config.json) can stand beside them: it is measured on the first run's data (its item count
checked). Reads only; nothing is written to the workdirs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

if not __package__:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

from bench.code_nmi import nmi  # noqa: E402
from jaxrec.config import config_from_json, get_config  # noqa: E402
from jaxrec.data import load_dataset, training_interactions  # noqa: E402
from jaxrec.methods import get_method  # noqa: E402
from jaxrec.tokenizer.codes import CodeTable  # noqa: E402
from jaxrec.pipeline import ensure_features  # noqa: E402


def semantic_codes(workdir: str, cfg) -> np.ndarray:
  """int [N, L]: the run's codes without the appended collision level; for a run whose IDs
  change in training (ETEGRec, SIIT) its best checkpoint's (`codes_final.npz`), else the
  table it trained on (`codes.npz`)."""
  name = "codes_final" if os.path.exists(os.path.join(workdir, "codes_final.npz")) else "codes"
  table = CodeTable.load(workdir, name)
  codes = table.codes_NxC
  if cfg is None:          # a `jaxrec.tokenize` workdir: its statistics count the levels
    levels = len(table.stats["before_resolution"]["used"])
  else:
    levels = int(cfg.tokenizer.levels)
  if codes.shape[1] not in (levels, levels + 1):
    raise ValueError(f"{os.path.join(workdir, name)}.npz: {codes.shape[1]} levels, config says "
                     f"tokenizer.levels={levels} (+1 collision level)")
  return codes[:, :levels]


def prefix_groups(codes: np.ndarray, l: int) -> np.ndarray:
  """int [N]: one group index per distinct prefix of length l."""
  return np.unique(codes[:, :l], axis=0, return_inverse=True)[1].reshape(-1)


def pair_share(groups: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict:
  """Share of pairs (a[i], b[i]) in one group, its chance level and the lift."""
  same = float((groups[a] == groups[b]).mean())
  n = groups.max() + 1
  chance = float((np.bincount(groups[a], minlength=n) / len(a)
                  * np.bincount(groups[b], minlength=n) / len(b)).sum())
  return {"share": round(same, 4), "chance": round(chance, 4),
          "lift": round(same / chance, 2) if chance else None}


def nearest(features: np.ndarray, block: int = 1024) -> np.ndarray:
  """int [N]: each row's nearest other row by cosine."""
  x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
  out = np.empty(len(x), np.int64)
  for s in range(0, len(x), block):
    sim = x[s:s + block] @ x.T
    sim[np.arange(len(sim)), np.arange(s, s + len(sim))] = -np.inf
    out[s:s + block] = sim.argmax(1)
  return out


def pairs(ds) -> dict:
  """The pair kinds above: name -> (first items, second items)."""
  keep = training_interactions(ds)
  user = np.repeat(np.arange(ds.n_users), ds.lengths_U)
  idx = np.flatnonzero(keep[:-1] & keep[1:] & (user[:-1] == user[1:]))
  a, b = ds.items_I[idx], ds.items_I[idx + 1]
  step = a != b
  ends = ds.offsets_U1[1:]
  last, target = ds.items_I[ends - 2], ds.items_I[ends - 1]
  out = {"transitions": (a[step], b[step]), "test step": (last[last != target], target[last != target])}
  for name, matrix in ds.features.items():
    if "+" not in name:                     # the joined view is its parts again
      out[f"{name} nn"] = (np.arange(ds.n_items), nearest(np.asarray(matrix, np.float32)))
  return out


def level_stats(codes: np.ndarray, l: int, groups: np.ndarray) -> dict:
  """Level l's codes used and their perplexity; the largest of `groups` (the l-prefixes)."""
  counts = np.bincount(groups)
  p = np.bincount(codes[:, l - 1]) / len(codes)
  p = p[p > 0]
  return {"used": int(len(p)), "perplexity": round(float(np.exp(-(p * np.log(p)).sum())), 1),
          "largest_group": int(counts.max())}


def measure(codes: np.ndarray, kinds: dict, reference) -> dict:
  """Per prefix length: level_stats, pair_share for every pair kind, NMI with `reference`."""
  rows = {}
  for l in range(1, codes.shape[1] + 1):
    groups = prefix_groups(codes, l)
    row = {**level_stats(codes, l, groups),
           **{k: pair_share(groups, a, b) for k, (a, b) in kinds.items()}}
    if reference is not None:
      row["nmi shipped l1"] = round(nmi(groups, reference[:, 0]), 4)
      row["nmi shipped l1-2"] = round(nmi(groups, prefix_groups(reference, 2)), 4)
    rows[f"prefix {l}"] = row
  return rows


def show(name: str, rows: dict, kinds) -> None:
  for prefix, r in rows.items():
    nmis = [f"NMI {k[4:]} {v}" for k, v in r.items() if k.startswith("nmi ")]
    print(f"{name} {prefix}: used {r['used']}, perplexity {r['perplexity']}, largest "
          f"{r['largest_group']}; " + "; ".join(
              f"{k} {r[k]['share']:.4f} (chance {r[k]['chance']:.4f}, lift {r[k]['lift']})"
              for k in kinds) + "".join(f"; {n}" for n in nmis))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("workdirs", nargs="*")
  p.add_argument("--data", default="", help="METHOD:VARIANT whose data set ships an ID table "
                 "(data.index, e.g. tiger:letter_ids_paper): that table measured as a row, on "
                 "the features that config loads (no workdir needed)")
  p.add_argument("--out", help="write the figures as JSON here")
  args = p.parse_args(argv)
  if not args.workdirs and not args.data:
    p.error("give workdirs, --data METHOD:VARIANT, or both")

  cfgs = []    # None for a `jaxrec.tokenize` workdir (codes, no config.json)
  for w in args.workdirs:
    path = os.path.join(w, "config.json")
    if os.path.exists(path):
      with open(path) as f:
        cfgs.append(config_from_json(f.read()))
    elif os.path.exists(os.path.join(w, "codes.json")):
      cfgs.append(None)
    else:
      raise SystemExit(f"{w}: neither a run (config.json) nor a tokenizer's workdir (codes.json)")
  runs = [c for c in cfgs if c is not None]
  if args.data:
    cfg = get_config(*args.data.split(":"))
    method = get_method(cfg.method)
  elif not runs:
    p.error("a tokenizer's workdir has no config to read the data from: give a run's "
            "workdir first, or --data METHOD:VARIANT")
  else:
    cfg = runs[0].copy_and_resolve_references()
    method = get_method("tiger")
    with cfg.unlocked():
      cfg.tokenizer.feature = "text+cf"   # derives (or reads from the cache) both views
  data = {(c.data.dir, c.data.name) for c in runs} | {(cfg.data.dir, cfg.data.name)}
  if len(data) > 1:
    raise SystemExit(f"the runs read different data sets: {sorted(data)}")
  with cfg.unlocked():
    cfg.data.index = os.path.exists(os.path.join(cfg.data.dir, f"{cfg.data.name}.index.json"))
  ds = ensure_features(cfg, load_dataset(cfg.data), method, print)
  kinds = pairs(ds)
  reference = ds.codes_NxC

  report = {"data": f"{cfg.data.dir} ({ds.n_items} items, {ds.n_users} users)",
            "pairs": {k: int(len(v[0])) for k, v in kinds.items()}, "runs": {}}
  if args.data and reference is not None:
    rows = measure(reference, kinds, None)
    show(f"{cfg.data.name}.index.json", rows, kinds)
    report["runs"][f"{cfg.data.name}.index.json"] = {"levels": rows}
  for w, c in zip(args.workdirs, cfgs):
    codes = semantic_codes(w, c)
    if len(codes) != ds.n_items:
      raise SystemExit(f"{w}: its codes have {len(codes)} items, the data set has {ds.n_items}")
    rows = measure(codes, kinds, reference)
    show(w, rows, kinds)
    report["runs"][w] = ({"method": c.method, "seed": int(c.seed)} if c is not None else
                         {"method": "tokenizer only"}) | {"levels": rows}
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1)


if __name__ == "__main__":
  main()
