"""report.png: training loss, validation metrics over time, code usage per level."""
from __future__ import annotations

import os

import numpy as np

from jaxrec.checkpoint import read_jsonl


def write_report(workdir: str, table=None) -> str:
  """Loss and validation curves, and code usage per level when the run has a code table."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  train, valid = [], []
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    for r in read_jsonl(path):
      if r.get("split") == "valid":
        valid.append(r)
      elif "loss" in r:
        train.append(r)
  fig, ax = plt.subplots(1, 3 if table is not None else 2,
                         figsize=(13 if table is not None else 8.7, 3.4))
  if train:
    ax[0].plot([r["step"] for r in train], [r["loss"] for r in train])
  ax[0].set_title("training loss")
  ax[0].set_xlabel("step")
  for key in ("recall@10", "ndcg@10", "valid_loss"):   # (train.select='loss' records the loss)
    points = [(r["epoch"], r[key]) for r in valid if key in r]
    if points:
      ax[1].plot(*zip(*points), marker="o", label=key)
  ax[1].set_title("validation")
  ax[1].set_xlabel("epoch")
  ax[1].legend(fontsize=8)
  if table is not None:
    _plot_usage(ax[2], table)
  fig.tight_layout()
  out = os.path.join(workdir, "report.png")
  fig.savefig(out, dpi=90)
  plt.close(fig)
  return out


def _plot_usage(ax, table):
  used = [int((np.bincount(table.codes_NxC[:, l], minlength=table.sizes[l]) > 0).sum())
          for l in range(table.depth)]
  ax.bar(np.arange(table.depth) + 1, [u / s for u, s in zip(used, table.sizes)])
  for l, (u, s) in enumerate(zip(used, table.sizes)):
    ax.text(l + 1, u / s, f"{u}/{s}", ha="center", va="bottom", fontsize=8)
  ax.set_ylim(0, 1.15)
  ax.set_title("codes used per level")
  ax.set_xlabel("level")
