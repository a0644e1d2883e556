"""One module per method: its extra losses and its schedule, written on the shared core.

A method exposes:
  tokenizer_loss(cfg, dataset) -> None, or a `jaxrec.tokenizer.train.Extra` whose terms are
                                  added to the tokenizer loss
  required_features(cfg) -> item features the method reads besides the tokenizer's input
  build_code_table(cfg, dataset, key, workdir, log, n_devices) -> (CodeTable, tokenizer):
                                  a tokenizer of the method's own (SimCIT) instead of the RQ-VAE
  training_plan(run, key, steps_per_epoch) -> a `trainer.Plan` (default: `trainer.default_plan`)
  setup_model(run)             -> a model over item ids, not codes (SASRec): sets run.model,
                                  run.eval_fn and its training samples; no code table
The recommender's code loss (cross-entropy on logits / train.tau) is shared; methods
change it through config.
"""
from __future__ import annotations

import importlib

METHODS = ("tiger", "letter", "etegrec", "sasrec", "simcit", "siit")


def build_code_table(cfg, dataset, method, workdir=None, log=print, n_devices: int = 1):
  """The run's item code table and tokenizer: the method's own tokenizer when it has one
  (SimCIT), else the shared RQ-VAE / given / random table with the method's extra terms."""
  import jax
  from jaxrec.tokenizer import build
  key = jax.random.fold_in(jax.random.key(cfg.seed), 0)
  if hasattr(method, "build_code_table"):
    return method.build_code_table(cfg, dataset, key, workdir=workdir, log=log,
                                   n_devices=n_devices)
  return build.build_code_table(cfg.tokenizer, dataset, key, cfg.seed, workdir=workdir,
                                extra=method.tokenizer_loss(cfg, dataset), log=log)


def get_method(name: str):
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; available: {METHODS}")
  return importlib.import_module(f"jaxrec.methods.{name}")
