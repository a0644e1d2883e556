"""Item features a run needs but its data set lacks, derived from what it has.

`text`: the item text embedded by `jaxrec.embed` (a sentence-transformers folder, Flax),
read from `embed.out_dir` (default: the cache's `text/`), or embedded in-run when
`embed.model` names a folder; the file must come from the data set's current text.
`cf`: collaborative item embeddings, the item table of a SASRec trained on the data set's
interactions (`config.cf`: LETTER's 32-d, ETEGRec's 256-d). The SASRec run is a full jaxrec
run (checkpoints, resume, early stopping on valid NDCG@10, results.json) in a cache folder
named by a fingerprint of the interactions and the SASRec settings, so a second method on
the same data reuses it. Every other missing feature is a clear error.
"""
from __future__ import annotations

import dataclasses
import json
import os

import ml_collections
import numpy as np

from jaxrec.config import ConfigError, without_added_defaults
from jaxrec.data.dataset import Dataset, validate_features
from jaxrec.tokenizer.codes import fingerprint

DERIVED = {"cf": "the item table of a SASRec trained on the interactions (config.cf)",
           "text": "the item text embedded by `python -m jaxrec.embed --model PATH` (config.embed)"}


def required_features(cfg, method) -> tuple[str, ...]:
  """The item features a run of `method` reads: its tokenizer's input and the method's own."""
  if hasattr(method, "setup_model"):        # models over item ids read no item features
    return ()
  names = [cfg.tokenizer.feature] if cfg.tokenizer.source == "rqvae" else []
  names += list(getattr(method, "required_features", lambda c: ())(cfg))
  return tuple(dict.fromkeys(names))


def ensure_features(cfg, ds: Dataset, method, log=print) -> Dataset:
  """`ds` with every required feature present, deriving `cf` when it is missing."""
  for name in required_features(cfg, method):
    if name in ds.features:
      continue
    if name not in DERIVED:
      have = ", ".join(sorted(ds.features)) or "none"
      raise ConfigError(
          f"item feature {name!r} is needed (tokenizer.feature or a method's feature) but "
          f"data set {ds.name!r} has features: {have}. Load <data.dir>/{ds.name}.{name}.npy by "
          f"adding {name!r} to data.features, or use 'cf' ({DERIVED['cf']}) or 'text' "
          f"({DERIVED['text']})")
    derive = cf_embeddings if name == "cf" else text_embeddings
    ds = dataclasses.replace(ds, features={**ds.features, name: derive(cfg, ds, log)})
  return ds


def text_dir(cfg) -> str:
  return os.path.expanduser(cfg.embed.out_dir) if cfg.embed.out_dir else os.path.join(
      cache_root(cfg), "text")


def text_embeddings(cfg, ds: Dataset, log=print) -> np.ndarray:
  """The `text` feature of `ds`: embedded earlier by `jaxrec.embed` (checked against the
  data set's current text), or now with `embed.model`."""
  from jaxrec import embed
  path = os.path.join(text_dir(cfg), f"{ds.name}.text.npy")
  meta_path = path[:-4] + ".json"
  texts = embed.item_texts(ds, cfg.embed.fields)
  want = fingerprint(texts)
  meta = None
  if os.path.exists(path) and os.path.exists(meta_path):
    with open(meta_path) as f:
      meta = json.load(f)
  if meta is not None and meta.get("text_fingerprint") == want and (
      not cfg.embed.model or os.path.abspath(os.path.expanduser(cfg.embed.model)) == meta["model"]):
    log(f"text: reusing {path} ({meta['model']}, fields {meta['fields']})")
  elif cfg.embed.model:
    embed.embed_dataset(cfg, ds, cfg.embed.model, text_dir(cfg), log)
  elif meta is not None:
    raise ConfigError(f"{path}: embedded from other text than data set {ds.name!r} has now "
                      f"(fields {meta.get('fields')} vs embed.fields {list(cfg.embed.fields)}, or "
                      "the item file changed): run `python -m jaxrec.embed --config ... --model "
                      "PATH` again, or set embed.model=PATH to embed in-run")
  else:
    raise ConfigError(f"item feature 'text' of data set {ds.name!r} is not embedded yet "
                      f"({path} not found): run `python -m jaxrec.embed --config <this config> "
                      "--model PATH` with a local sentence-transformers folder, or set "
                      "embed.model=PATH to embed in-run")
  return validate_features(path, "text", np.load(path), ds.n_items)


def sasrec_run_config(cfg) -> ml_collections.ConfigDict:
  """The config of the SASRec run that derives `cf` for `cfg`'s data set."""
  s = ml_collections.ConfigDict()
  s.method = "sasrec"
  s.variant = "cf"
  s.seed = cfg.seed
  s.data = ml_collections.ConfigDict(cfg.data.to_dict())
  s.data.features = ()
  s.data.index = False
  s.model = ml_collections.ConfigDict(cfg.cf.model.to_dict())
  s.train = ml_collections.ConfigDict(cfg.cf.train.to_dict())
  return s


def cache_root(cfg) -> str:
  return os.path.expanduser(cfg.cf.cache_dir or os.environ.get("JAXREC_CACHE_DIR", "")
                            or "~/.cache/jaxrec")


def cf_embeddings(cfg, ds: Dataset, log=print) -> np.ndarray:
  """Trains (or reuses) the SASRec of `cfg.cf` on `ds`'s interactions: float32 [N, d]."""
  from jaxrec import trainer
  scfg = sasrec_run_config(cfg)
  settings = without_added_defaults({k: scfg[k].to_dict() for k in ("model", "train")})
  fp = fingerprint(ds.offsets_U1, ds.items_I, ds.n_items, settings, scfg.seed,
                   scfg.data.max_len, list(scfg.data.buckets))
  workdir = os.path.join(cache_root(cfg), f"sasrec-{ds.name}-{fp[:16]}")
  path = os.path.join(workdir, f"{ds.name}.sasrec{scfg.model.d}.npy")
  if not os.path.exists(os.path.join(workdir, "results.json")) or not os.path.exists(path):
    log(f"cf: item feature 'cf' is not in the data set; training SASRec (d {scfg.model.d}) "
        f"on its interactions in {workdir}")
    trainer.train_and_evaluate(scfg, workdir, log=lambda m: log(f"[cf sasrec] {m}"))
  else:
    with open(os.path.join(workdir, "results.json")) as f:
      valid = json.load(f)["valid"]
    log(f"cf: reusing {path} (SASRec valid R@10 {valid['recall@10']:.4f}, "
        f"N@10 {valid['ndcg@10']:.4f})")
  return validate_features(path, "cf", np.load(path), ds.n_items)
