"""How much of the synthetic data's planted hierarchy a code table carries.

  python -m jaxrec.tokenize --config configs/simcit.py --workdir /tmp/simcit
  python -m bench.code_nmi /tmp/simcit [--config configs/simcit.py]   # or python bench/code_nmi.py

Prints the normalised mutual information (sqrt normalisation) between each level's codes
and the generator's subtopic of every item, the same for the first two levels' prefix, the
first level's NMI with each item's popularity (the quartile of its interaction count), and
how many items have distinct IDs before the appended collision level. Only for code tables
fitted on the built-in synthetic data set (the generator is rerun from the config's
`data.synthetic` settings to recover the subtopics).
"""
from __future__ import annotations

import argparse

import numpy as np

from jaxrec.config import load_config_module
from jaxrec.data import synthetic
from jaxrec.tokenizer.codes import CodeTable


def nmi(a, b) -> float:
  """Normalised mutual information of two labelings, MI / sqrt(H(a) H(b))."""
  a = np.unique(a, return_inverse=True)[1].reshape(-1)
  b = np.unique(b, return_inverse=True)[1].reshape(-1)
  joint = np.zeros((a.max() + 1, b.max() + 1))
  np.add.at(joint, (a, b), 1.0)
  p = joint / len(a)
  pa, pb = p.sum(1), p.sum(0)
  nz = p > 0
  mi = float((p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum())
  h = lambda q: float(-(q[q > 0] * np.log(q[q > 0])).sum())
  return float(mi / np.sqrt(h(pa) * h(pb))) if h(pa) > 0 and h(pb) > 0 else 0.0


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("workdir", help="directory holding codes.npz (jaxrec.tokenize or jaxrec.train)")
  p.add_argument("--config", default="configs/simcit.py", help="config file[:variant] of the fit")
  args = p.parse_args()
  path, _, variant = args.config.partition(":")
  cfg = load_config_module(path).get_config(variant or "default")
  if cfg.data.source != "synthetic":
    raise SystemExit(f"error: {args.config}: data.source={cfg.data.source!r}; only the synthetic "
                     "data set has planted subtopics")
  ds, structure = synthetic.generate(synthetic.SyntheticSpec(**cfg.data.synthetic.to_dict()))
  table = CodeTable.load(args.workdir)
  codes = np.asarray(table.codes_NxC)
  if len(codes) != len(structure.subtopic_N):
    raise SystemExit(f"error: {args.workdir}: {len(codes)} items, the config's synthetic set has "
                     f"{len(structure.subtopic_N)}")
  own = len(table.stats["before_resolution"]["used"])     # the tokenizer's levels
  levels = [round(nmi(codes[:, l], structure.subtopic_N), 3) for l in range(codes.shape[1])]
  prefix = round(nmi(codes[:, 0] * (codes[:, 1].max() + 1) + codes[:, 1], structure.subtopic_N), 3)
  counts = np.bincount(ds.items_I, minlength=ds.n_items)
  quartile = np.digitize(counts, np.quantile(counts, [0.25, 0.5, 0.75]))
  print(f"NMI with the planted subtopics per level {levels}, first two levels {prefix}; "
        f"level 1 with the items' interaction-count quartile {nmi(codes[:, 0], quartile):.3f}; "
        f"distinct IDs over the tokenizer's {own} levels {len(np.unique(codes[:, :own], axis=0))} "
        f"of {len(codes)}")


if __name__ == "__main__":
  main()
