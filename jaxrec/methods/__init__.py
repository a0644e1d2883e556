"""One module per method: its extra losses and its schedule, written on the shared core.

A method exposes:
  tokenizer_loss(cfg, dataset) -> None or a static callable added to the tokenizer loss
  recommender_loss(cfg) -> the code loss used by the recommender step
"""
from __future__ import annotations

import importlib

METHODS = ("tiger",)


def get_method(name: str):
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; available: {METHODS}")
  return importlib.import_module(f"jaxrec.methods.{name}")
