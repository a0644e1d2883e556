"""Config helpers shared by the command-line entry points."""
from __future__ import annotations

import json
import os

import ml_collections

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_config_path() -> str:
  """configs/tiger.py of this checkout: what `python -m jaxrec.train` runs with no flags."""
  return os.path.join(_REPO_ROOT, "configs", "tiger.py")


def config_to_json(cfg: ml_collections.ConfigDict) -> str:
  return json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=str)


def config_from_json(text: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(text))
