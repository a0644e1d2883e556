"""One module per method: its extra losses and its schedule, written on the shared core.

A method exposes:
  tokenizer_loss(cfg, dataset) -> None, or a `jaxrec.tokenizer.train.Extra` whose terms are
                                  added to the tokenizer loss
  required_features(cfg) -> item features the method reads besides the tokenizer's input
  training_plan(run, key, steps_per_epoch) -> a `trainer.Plan` (default: `trainer.default_plan`)
  setup_model(run)             -> a model over item ids, not codes (SASRec): sets run.model,
                                  run.eval_fn and its training samples; no code table
The recommender's code loss (cross-entropy on logits / train.tau) is shared; methods
change it through config.
"""
from __future__ import annotations

import importlib

METHODS = ("tiger", "letter", "etegrec", "sasrec")


def get_method(name: str):
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; available: {METHODS}")
  return importlib.import_module(f"jaxrec.methods.{name}")
