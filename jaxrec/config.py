"""Config helpers shared by the command-line entry points."""
from __future__ import annotations

import json
import os

import ml_collections

class ConfigError(ValueError):
  """A config value is invalid or inconsistent with the data; the message names the key and
  the fix."""


_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_config_path() -> str:
  """configs/tiger.py of this checkout: what `python -m jaxrec.train` runs with no flags."""
  return os.path.join(_REPO_ROOT, "configs", "tiger.py")


def config_to_json(cfg: ml_collections.ConfigDict) -> str:
  return json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=str)


def config_from_json(text: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(text))


def load_config_module(path: str):
  """Imports a config file by path (configs build on each other this way: letter.py on
  tiger.py, without configs/ being a package)."""
  import importlib.util
  name = "_jaxrec_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(method: str = "tiger", variant: str = "default") -> ml_collections.ConfigDict:
  """The config `configs/<method>.py:<variant>` of this checkout (for notebooks and scripts;
  the command line takes `--config configs/<method>.py:<variant>`)."""
  path = os.path.join(_REPO_ROOT, "configs", f"{method}.py")
  if not os.path.exists(path):
    methods = sorted(f[:-3] for f in os.listdir(os.path.dirname(path)) if f.endswith(".py"))
    raise FileNotFoundError(f"{path}: no such config (methods: {methods})")
  return load_config_module(path).get_config(variant)
