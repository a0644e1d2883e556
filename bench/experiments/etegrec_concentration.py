"""Why ETEGRec's joint training concentrates items (the claims issue, 1a): the tokenizer of an
ETEGRec config pre-trained as the run pre-trains it, then trained for a few of the
alternation's tokenizer epochs with the alignment losses off (their first `warm_epochs`),
under controls that each change one thing:

  alternation   as the run: reconstruction + RQ loss over each sequence batch's unique
                targets, ETEGRec's tokenizer AdamW (etegrec.tok_lr, its warm-up, weight decay)
  catalogue     the same optimizer and steps, batches of the catalogue's items, each once
                per epoch (the pre-training's sampling)
  no_update     lr 0: the items re-coded by the same tokenizer (a switch of mode alone)

After every epoch all items are re-coded; the table gives the largest group of items that
share an ID (what the collision level must hold), the distinct IDs and the codes used per
level.

  JAXREC_DATA_DIR=../shared/data python -m bench.experiments.etegrec_concentration \\
      --variant default --data scientific --epochs 3
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile

if not __package__:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from bench import common  # noqa: E402
from jaxrec import pipeline  # noqa: E402
from jaxrec.config import get_config  # noqa: E402
from jaxrec.data import leave_one_out, load_dataset, plan_batches  # noqa: E402
from jaxrec.methods import get_method  # noqa: E402
from jaxrec.methods.base import code_table  # noqa: E402
from jaxrec.methods.etegrec import _optimizers, unique_targets  # noqa: E402
from jaxrec.optim import TrainState  # noqa: E402
from jaxrec.tokenizer import codes as codes_lib  # noqa: E402
from jaxrec.tokenizer.rqvae import reconstruction_loss  # noqa: E402
from jaxrec.tokenizer.train import encode_catalogue  # noqa: E402


def config(variant: str, data: str):
  cfg = get_config("etegrec", variant)
  if data == "scientific":      # the new user's run: configs/etegrec.py with the data flags only
    sci = get_config("tiger", "scientific").data
    for k in ("source", "dir", "name", "min_len", "short_users"):
      cfg.data[k] = sci[k]
    cfg.data.features = ()
    cfg.tokenizer.feature = "cf"   # derived in-run (SASRec, cfg.cf)
  return cfg


@functools.partial(jax.jit, static_argnames=("model", "tx"))
def tok_step(state, x_BxF, mask_B, key, *, model, tx):
  """The alternation's tokenizer step with the alignment weights at 0 (ETEGRec's
  forward_terms: reconstruction + RQ loss over the masked rows)."""
  def loss_fn(params):
    x_hat, rq, _ = model.apply(params, x_BxF, True, mask_B=mask_B, rngs={"dropout": key})
    return reconstruction_loss(x_hat, x_BxF, mask_B) + rq.loss
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt = tx.update(grads, state.opt_state, state.params)
  return TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt), loss


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--variant", default="default")
  p.add_argument("--data", default="scientific", choices=["scientific", "config"])
  p.add_argument("--epochs", type=int, default=3)
  p.add_argument("--out", default=None)
  args = p.parse_args()
  cfg = config(args.variant, args.data)
  method = get_method("etegrec")
  ds = pipeline.ensure_features(cfg, load_dataset(cfg.data), method, print)
  workdir = tempfile.mkdtemp(prefix="etegrec-conc-")
  cfg.tokenizer.suffix_size = 1 << 16     # any group size: measured here, not refused
  table, (model, params0) = code_table(cfg, ds, method, workdir, log=lambda r: None)
  feats = jnp.asarray(ds.features[cfg.tokenizer.feature], jnp.float32)
  sizes = (cfg.tokenizer.codebook_size,) * cfg.tokenizer.levels
  start = np.asarray(encode_catalogue(params0, feats, model=model)["codes_NxC"])
  first = codes_lib.health_dict(start, sizes)
  tc, ec = cfg.train, cfg.etegrec
  split = leave_one_out(ds, cfg.data.max_len)["train"]
  target_I = ds.items_I[split.end_S]
  n = ds.n_items
  # who shares the largest ID: how often its items are targets, against the catalogue
  counts = np.bincount(target_I, minlength=n)
  _, inverse, group = np.unique(start, axis=0, return_inverse=True, return_counts=True)
  inverse = inverse.reshape(-1)
  big = inverse == np.argmax(group)
  first["largest_group_mean_targets"] = round(float(counts[big].mean()), 2)
  first["catalogue_mean_targets"] = round(float(counts.mean()), 2)
  first["largest_group_feature_norm"] = round(float(np.linalg.norm(np.asarray(feats)[big], axis=1).mean()), 4)
  first["catalogue_feature_norm"] = round(float(np.linalg.norm(np.asarray(feats), axis=1).mean()), 4)
  first["items_in_groups_over_16"] = int(np.sum(group[inverse] > 16))
  print("pre-trained: " + json.dumps(first), flush=True)
  rows = []
  for name in ("alternation", "catalogue", "no_update"):
    plan = [idx for _, idx in plan_batches(split, tc.batch_size, (cfg.data.max_len,), True,
                                           cfg.seed, 0)]
    tx, sched = _optimizers(tc, ec, len(plan))["tok"]
    if name == "no_update":
      tx = optax.sgd(0.0)
    state = TrainState(jnp.zeros((), jnp.int32), params0, tx.init(params0))
    rng = np.random.default_rng(0)
    for epoch in range(args.epochs):
      plan = [idx for _, idx in plan_batches(split, tc.batch_size, (cfg.data.max_len,), True,
                                             cfg.seed, epoch)]
      for s, idx in enumerate(plan):
        if name == "catalogue":    # the same number of rows, drawn from the catalogue
          items = rng.permutation(n)[:len(idx)]
          mask = np.ones(len(idx), bool)
        else:
          real = idx >= 0
          items = np.where(real, target_I[np.maximum(idx, 0)], 0)
          mask = np.asarray(unique_targets(jnp.asarray(items), jnp.asarray(real, jnp.float32)))
        key = jax.random.fold_in(jax.random.key(cfg.seed), epoch * 10_000 + s)
        state, loss = tok_step(state, feats[items], jnp.asarray(mask), key, model=model, tx=tx)
      codes = np.asarray(encode_catalogue(state.params, feats, model=model)["codes_NxC"])
      h = codes_lib.health_dict(codes, sizes)
      rows.append({"run": name, "epoch": epoch + 1, "largest_group": h["largest_group"],
                   "distinct_ids": h["distinct_ids"], "used": h["used"],
                   "ids_changed": round(float(np.mean(np.any(codes != start, axis=1))), 4),
                   "lr_end_of_epoch": float(sched(int(state.step))) if name != "no_update" else 0.0,
                   "loss": round(float(loss), 6)})
      print(json.dumps(rows[-1]), flush=True)
  targets_per_item = counts
  result = {"config": f"etegrec:{args.variant}", "data": ds.name, "items": n,
            "pretrained": first, "rows": rows,
            "targets": {"items_never_a_target": int(np.sum(targets_per_item == 0)),
                        "top_1pct_share": round(float(np.sort(targets_per_item)[::-1][:max(n // 100, 1)].sum()
                                                      / targets_per_item.sum()), 4)}}
  print(json.dumps(result["targets"]))
  common.write_json(common.result_path(f"etegrec-concentration-{args.variant}-{ds.name}.json",
                                       args.out), result)


if __name__ == "__main__":
  main()
