"""From a data set and `config.tokenizer` to an item CodeTable (trained, or given)."""
from __future__ import annotations

import functools
import os
import time
from typing import Callable, Optional

import flax
import jax
import numpy as np

from jaxrec.cache import check, move_aside, seal
from jaxrec.checkpoint import write_atomic
from jaxrec.config import tokenizer_fingerprint_dict
from jaxrec.errors import ConfigError, DataError
from jaxrec.fingerprint import fingerprint
from jaxrec.tokenizer import codes as codes_lib
from jaxrec.tokenizer import rqkmeans
from jaxrec.tokenizer import train as tok_train
from jaxrec.tokenizer.rqvae import RQVAE, rqvae_config


FITTED = ("rqvae", "rqkmeans")        # sources fitted on the item feature tokenizer.feature


def tokenizer_fingerprint(tok_cfg, dataset, seed: int, extra=None) -> str:
  """Same features (and the method's extra arrays) + same tokenizer config + same seed ->
  same IDs (and the same print)."""
  t = tokenizer_fingerprint_dict(tok_cfg)
  if tok_cfg.source == "given":
    return fingerprint("given", dataset.codes_NxC, t)
  if tok_cfg.source == "random":
    return fingerprint("random", dataset.n_items, t, seed)
  extra_parts = [np.asarray(a) for a in jax.tree.leaves(extra.data)] if extra else []
  return fingerprint(dataset.features[tok_cfg.feature], t, seed, jax.__version__,
                               *extra_parts)


def build_code_table(tok_cfg, dataset, key, seed: int, workdir: Optional[str] = None,
                     extra=None, log: Callable[[dict], None] = None):
  """Returns (CodeTable, tokenizer) where tokenizer is (model, params) or None for given codes.

  `extra` (a `tokenizer.train.Extra` or None) adds the method's terms to the tokenizer loss.

  With a workdir holding `codes.npz` of the same fingerprint, that table is reused (with
  the tokenizer saved beside it, `tokenizer.msgpack`, when there is one); a trained
  tokenizer is saved there."""
  if tok_cfg.source in FITTED and tok_cfg.feature not in dataset.features:
    raise ConfigError(f"tokenizer.feature={tok_cfg.feature!r} but the data set has features "
                      f"{sorted(dataset.features)} (add it to data.features, or use 'cf' to "
                      "derive it from the interactions with SASRec)")
  fp = tokenizer_fingerprint(tok_cfg, dataset, seed, extra)
  saved = reuse(workdir, fp, lambda: _load_tokenizer(tok_cfg, dataset, workdir), log)
  if saved is not None:
    return saved
  if tok_cfg.source == "given":
    if dataset.codes_NxC is None:
      raise ConfigError("tokenizer.source='given' but the data set has no codes "
                        "(set data.index=True for a <name>.index.json)")
    if dataset.codes_NxC.shape[1] != tok_cfg.levels:
      raise ConfigError(f"tokenizer.levels={tok_cfg.levels} but the data set's given IDs "
                        f"({dataset.name}.index.json) have {dataset.codes_NxC.shape[1]} levels: "
                        f"set tokenizer.levels={dataset.codes_NxC.shape[1]}")
    sizes = tuple(max(int(s), int(tok_cfg.codebook_size)) for s in dataset.code_sizes)
    stats = {"source": "given"}
    table = codes_lib.finalize_codes(dataset.codes_NxC, sizes, tok_cfg.collision,
                                     tok_cfg.suffix_size, stats, fp, resolve_fn=None
                                     if tok_cfg.collision != "sinkhorn" else _no_residuals,
                                     shared_ids=tok_cfg.shared_ids)
    return table, None
  if tok_cfg.source == "random":
    # What semantic IDs buy: the same shape, no semantics. Uniform codes per level from the
    # run's seed; collisions resolved by the appended level like any other table.
    rng = np.random.default_rng([seed, 0x5EED])
    codes = rng.integers(0, tok_cfg.codebook_size, (dataset.n_items, tok_cfg.levels))
    return codes_lib.finalize_codes(codes.astype(np.int32), (tok_cfg.codebook_size,) * tok_cfg.levels,
                                    tok_cfg.collision, tok_cfg.suffix_size, {"source": "random"},
                                    fp, resolve_fn=_no_residuals, shared_ids=tok_cfg.shared_ids), None
  if tok_cfg.source == "rqkmeans":
    return _rq_kmeans_table(tok_cfg, dataset, key, fp), None
  if tok_cfg.source != "rqvae":
    raise ConfigError(f"tokenizer.source must be 'rqvae', 'rqkmeans', 'given' or 'random', "
                      f"got {tok_cfg.source!r}")
  feats = dataset.features[tok_cfg.feature]
  arch = rqvae_config(tok_cfg, feats.shape[1])
  t0 = time.time()
  model, params, history = tok_train.fit(tok_cfg, arch, feats, key, extra=extra, log=log,
                                         checkpoints=fit_checkpoints(tok_cfg, workdir, fp, log))
  enc = tok_train.encode_catalogue(params, jax.numpy.asarray(feats), model=model)
  last = arch.levels - 1
  table = assign_catalogue(tok_cfg, enc["codes_NxC"], enc["residuals_NxCxD"][:, last],
                           params["params"]["codebooks"][last], fp,
                           {"source": "rqvae", "fit_seconds": round(time.time() - t0, 2),
                            "history": history[-1] if history else {},
                            **_kept(history, feats.shape[0]),
                            "catalogue_recon": float(enc["recon"])})
  save_tokenizer(workdir, params)
  return table, (model, params)


def _kept(history: list, n_items: int) -> dict:
  """tokenizer.keep='lowest_collision': the kept epoch's health record, and every logged
  epoch's [epoch, the rule's collision rate (1 - distinct IDs / items), largest group] that
  it chose among."""
  kept = [h for h in history if h.get("kept")]
  if not kept:
    return {}
  return {"kept": kept[-1],
          "collisions": [[h["epoch"], round(1.0 - h["distinct_ids"] / n_items, 6),
                          h["largest_group"]] for h in history if "distinct_ids" in h]}


ENTRY = ("codes.npz", "codes.json", "tokenizer.msgpack", "tokenizer.json")  # a fit's outputs


def _rq_kmeans_table(tok_cfg, dataset, key, fp: str) -> codes_lib.CodeTable:
  """RQ-KMeans on the tokenizer's feature: residual k-means, no autoencoder."""
  t0 = time.time()
  books, codes, residuals = rqkmeans.fit(tok_cfg, dataset.features[tok_cfg.feature], key)
  last = tok_cfg.levels - 1
  return assign_catalogue(tok_cfg, codes, residuals[:, last], books[last], fp,
                          {"source": "rqkmeans", "fit_seconds": round(time.time() - t0, 2)})


def saved_table(workdir: Optional[str], fp: str, log=None):
  """workdir's codes.npz when it holds the IDs of the same inputs (`fp`), else None: a
  tokenizer is fitted once per workdir and its IDs reused bit for bit. A damaged table is
  moved aside with one line, and None returned (the tokenizer is fitted again)."""
  if not workdir or not os.path.exists(os.path.join(workdir, "codes.npz")):
    return None
  try:
    table = codes_lib.CodeTable.load(workdir)
  except DataError as e:
    _set_aside(workdir, f"{e}", log)
    return None
  return table if table.fingerprint == fp else None


def reuse(workdir: Optional[str], fp: str, load_tokenizer: Callable, log=None):
  """(table, tokenizer) saved in workdir for the same inputs, or None; `load_tokenizer()`
  reads tokenizer.msgpack (None when there is none). Damage to any of the three files costs
  a new fit, never a crash."""
  table = saved_table(workdir, fp, log)
  if table is None:
    return None
  try:
    return table, load_tokenizer()
  except Exception as e:                     # noqa: BLE001 - msgpack / flax: all damage
    _set_aside(workdir, f"{os.path.join(workdir, 'tokenizer.msgpack')}: damaged "
               f"({type(e).__name__}: {e})", log)
    return None


def _set_aside(workdir: str, what: str, log) -> None:
  moved = [os.path.basename(move_aside(os.path.join(workdir, n))) for n in ENTRY
           if os.path.exists(os.path.join(workdir, n))]
  message = f"{what}: moved aside ({', '.join(moved)}); the tokenizer is fitted again"
  (log or print)({"message": message} if log is not None else message)


def fit_checkpoints(tok_cfg, workdir: Optional[str], fp: str, log) -> tok_train.FitCheckpoints:
  """The fit's checkpoints, `checkpoints/tokenizer-<fingerprint>` of the workdir (none
  without a workdir), every tokenizer.save_every epochs."""
  line = (lambda m: log({"message": m})) if log is not None else print
  return tok_train.FitCheckpoints(
      os.path.join(workdir, "checkpoints", f"tokenizer-{fp[:16]}") if workdir else None,
      tok_cfg.get("save_every", 0), log=line)


def save_tokenizer(workdir: Optional[str], params) -> None:
  """tokenizer.msgpack beside the code table (methods that train on, ETEGRec, read it),
  sealed by tokenizer.json (size and checksum)."""
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "tokenizer.msgpack")
    write_atomic(path, flax.serialization.to_bytes(params))
    seal(path, os.path.join(workdir, "tokenizer.json"), {})


def tokenizer_bytes(workdir: str) -> Optional[bytes]:
  """The saved tokenizer's bytes (None when there is none); a DataError when they differ
  from what was sealed (a tokenizer saved before seals existed is read as it is)."""
  path = os.path.join(workdir, "tokenizer.msgpack")
  if not os.path.exists(path):
    return None
  problem = check(path, os.path.join(workdir, "tokenizer.json"), legacy=lambda p: None)
  if problem and os.path.exists(os.path.join(workdir, "tokenizer.json")):
    raise DataError(path, None, f"damaged ({problem})")
  with open(path, "rb") as f:
    return f.read()


def _load_tokenizer(tok_cfg, dataset, workdir):
  """(model, params) saved by an earlier build in `workdir`, or None."""
  data = tokenizer_bytes(workdir) if tok_cfg.source == "rqvae" else None
  if data is None:
    return None
  model = RQVAE(rqvae_config(tok_cfg, dataset.features[tok_cfg.feature].shape[1]))
  return model, jax.tree.map(jax.numpy.asarray, flax.serialization.msgpack_restore(data))


def _no_residuals(codes):
  raise ConfigError("tokenizer.collision='sinkhorn' needs a trained tokenizer; given codes can only use "
                   "'suffix' or 'none'")


def assign_catalogue(tok_cfg, codes_NxC, last_residual_NxD, last_codebook_KxD, fp: str,
                     stats: dict) -> codes_lib.CodeTable:
  """The catalogue's code table from a trained tokenizer's hard codes, collisions resolved
  per `tok_cfg.collision` (appended level, or Sinkhorn re-assignment of the last level from
  its residuals and codebook)."""
  resolve = functools.partial(codes_lib.resolve_sinkhorn, last_residual_NxD=last_residual_NxD,
                              last_codebook_KxD=last_codebook_KxD, rounds=tok_cfg.sinkhorn_rounds,
                              eps=tok_cfg.sinkhorn_eps, iters=tok_cfg.sinkhorn_iters)
  return codes_lib.finalize_codes(np.asarray(codes_NxC), (tok_cfg.codebook_size,) * tok_cfg.levels,
                                  tok_cfg.collision, tok_cfg.suffix_size, stats, fp,
                                  resolve_fn=resolve, shared_ids=tok_cfg.shared_ids)


def write_outputs(table: codes_lib.CodeTable, workdir: str, dataset, title: str) -> str:
  """codes.npz + codes.json, <name>.index.json (LETTER's format) and code_usage.png; then
  the tokenizer fit's checkpoints, no longer needed, are removed."""
  table.save(workdir)
  index_path = os.path.join(workdir, f"{dataset.name}.index.json")
  table.write_index_json(index_path, dataset.item_keys)
  plot_usage(table, os.path.join(workdir, "code_usage.png"), title)
  remove_fit_checkpoints(workdir)
  return index_path


def remove_fit_checkpoints(workdir: str) -> None:
  """Removes `checkpoints/tokenizer-*`: called once codes.npz is written, never before, so
  that a kill between the end of a fit and the code table's save costs no epoch."""
  import glob
  import shutil
  for path in glob.glob(os.path.join(workdir, "checkpoints", "tokenizer-*")):
    shutil.rmtree(path, ignore_errors=True)


def plot_usage(table: codes_lib.CodeTable, path: str, title: str = ""):
  """PNG of per-level code usage: codes sorted by how many items use them."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  depth = table.depth
  fig, axes = plt.subplots(1, depth, figsize=(3.2 * depth, 2.8), squeeze=False)
  for level in range(depth):
    counts = np.bincount(table.codes_NxC[:, level], minlength=table.sizes[level])
    ax = axes[0, level]
    ax.bar(np.arange(len(counts)), np.sort(counts)[::-1], width=1.0)
    ax.set_title(f"level {level + 1}: {int((counts > 0).sum())}/{table.sizes[level]} used",
                 fontsize=9)
    ax.set_xlabel("code (sorted)")
    if level == 0:
      ax.set_ylabel("items")
  fig.suptitle(title or "code usage per level", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
