"""What the benchmark scripts share: where the repository and its results are, the
--cpu_devices flag, and result files that name the machine a figure came from.

  from bench import common
  common.add_cpu_devices(parser)           # then common.set_cpu_devices(args) first thing
  common.write_json(common.result_path(f"speed-{common.platform()}.json", args.out), result)

Every JSON written by `write_json` carries a "machine" record (`machine()`): the device, the
CPU model and its core count, Python's and the numerical packages' versions.
"""
from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform as _platform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository
RESULTS = os.path.join(ROOT, "bench", "results")
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy")   # versions a machine record names


def result_path(name: str, out: str | None = None) -> str:
  """`out` when given (a --out flag), else bench/results/<name>."""
  return out or os.path.join(RESULTS, name)


def add_cpu_devices(parser) -> None:
  """The --cpu_devices flag of every script that runs jaxrec's steps, as jaxrec's commands."""
  parser.add_argument("--cpu_devices", type=int, default=None,
                      help="XLA:CPU devices the host is split into, each taking a share of "
                           "every batch, as jaxrec's commands (default: jaxrec.xla's "
                           "DEFAULT_CPU_DEVICES, or the environment's)")


def set_cpu_devices(args) -> None:
  """Applies --cpu_devices and turns on the persistent compilation cache, as jaxrec's
  commands do (a queue's rerun loads its compiled steps: an ETEGRec row compiled for 6
  minutes at every restart without it); call it before any JAX operation."""
  from jaxrec.xla import enable_compile_cache, set_cpu_devices as apply
  apply(args.cpu_devices)
  enable_compile_cache()


def platform() -> str:
  """JAX's platform of the first device: 'cpu', 'gpu' or 'tpu' (result file names)."""
  import jax
  return jax.devices()[0].platform


def cpu_model() -> str:
  """The host CPU's model name (Linux: /proc/cpuinfo), else what `platform` knows."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.lower().startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return _platform.processor() or _platform.machine()


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


@functools.lru_cache(maxsize=None)
def machine() -> dict:
  """The hardware and software a figure comes from: JAX's devices (kind, platform, count),
  the host CPU's model and core count, Python's and PACKAGES' versions."""
  import jax
  devices = jax.devices()
  return {"device": f"{devices[0].device_kind} ({devices[0].platform}) x{len(devices)}",
          "cpu": cpu_model(), "cpus": os.cpu_count(), "python": _platform.python_version(),
          **{p: _version(p) for p in PACKAGES}}


def machine_line() -> str:
  """`machine()` in one line, for a script's first printed line."""
  m = machine()
  versions = ", ".join(f"{p} {m[p]}" for p in PACKAGES if m[p])
  return f"device {m['device']}; CPU {m['cpu']} ({m['cpus']} cores); {versions}"


def write_json(path: str, result: dict, indent: int = 2) -> str:
  """Writes `result` with the machine record first ({"machine": machine(), **result}),
  creating the folder; returns the path."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump({"machine": machine(), **result}, f, indent=indent)
  return path
