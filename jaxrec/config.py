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


def get_config(method: str = "tiger", variant: str = "default") -> ml_collections.ConfigDict:
  """The config `configs/<method>.py:<variant>` of this checkout (for notebooks and scripts;
  the command line takes `--config configs/<method>.py:<variant>`)."""
  import importlib.util
  path = os.path.join(_REPO_ROOT, "configs", f"{method}.py")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such config (methods: "
                            f"{sorted(f[:-3] for f in os.listdir(os.path.dirname(path)) if f.endswith('.py'))})")
  spec = importlib.util.spec_from_file_location(f"_jaxrec_configs_{method}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)
