"""The generative recommenders by `config.model.kind`: each is a model class, its config
builder and a module of pure steps with the same signatures (`init_params`, `train_step`,
`loss_sums`, `eval_step`, `recommend_step`), so that a method's plan, the loop, the
export and the benchmarks run any of them unchanged.

  t5       encoder-decoder (TIGER's; `recommender/t5.py`, `steps.py`)
  decoder  decoder-only, the history's codes then the target's in one causal sequence
           (GRID's decoder-only TIGER; `recommender/decoder.py`, `decoder_steps.py`)
"""
from __future__ import annotations

import dataclasses
import types

from jaxrec.recommender import decoder, decoder_steps, hf, steps, t5, t5_layers

KINDS = ("t5", "decoder")


@dataclasses.dataclass(frozen=True)
class Family:
  kind: str
  model: type            # the flax Module, built from its frozen config
  model_config: object   # (config.model, level sizes, dtype) -> the frozen config
  steps: types.ModuleType


def kind_of(model_cfg) -> str:
  """A `config.model`'s kind ('t5' when the key is absent: runs made before it)."""
  return model_cfg.get("kind", "t5")


def family(kind: str) -> Family:
  """The model class, config builder and steps of `kind`."""
  if kind == "t5":
    return Family(kind, t5.T5, t5_layers.model_config, steps)
  if kind == "decoder":
    return Family(kind, decoder.Decoder, decoder.model_config, decoder_steps)
  raise ValueError(f"model.kind={kind!r}: must be one of {', '.join(KINDS)}")


def build(model_cfg, level_sizes, dtype: str = "float32"):
  """(the model over codes of `level_sizes`, its steps module) for a `config.model`; a
  decoder with a `path` is that Hugging Face folder's pretrained LLM (`hf.model_config`)."""
  f = family(kind_of(model_cfg))
  make = hf.model_config if model_cfg.get("path") else f.model_config
  return f.model(make(model_cfg, level_sizes, dtype)), f.steps
