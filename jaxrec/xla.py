"""Per-program XLA compiler options for jaxrec's jitted steps, the persistent
compilation cache of jaxrec's commands, and how many XLA:CPU devices they split a host into.

On CPU, XLA (jax 0.10) hands fusions to YNNPACK; for this workload's shapes that was
slower for decoding (bench/speed.py on the 2-core dev CPU: 113 users/s with XLA's default
fusions, 154 without YNN fusions; training 161 vs 167 samples/s with YNN for dots only).
So decoding compiles without YNN fusions and training with YNN dot fusions only.
Options are passed per `jax.jit` (never through the global XLA_FLAGS) and only on the CPU
backend. JAXREC_XLA_CPU_YNN=<value> overrides both ("default" keeps XLA's own choice).
"""
from __future__ import annotations

import functools
import os

import jax

CPU_YNN_FUSION_TYPES = {"train": "LIBRARY_FUSION_TYPE_DOT", "decode": ""}
DEFAULT_CPU_DEVICES = 2


def compiler_options(kind: str = "train") -> dict:
  """Compiler options for a jitted step of `kind` ('train' or 'decode')."""
  if jax.default_backend() != "cpu":
    return {}
  value = os.environ.get("JAXREC_XLA_CPU_YNN", CPU_YNN_FUSION_TYPES[kind])
  if value == "default":
    return {}
  return {"xla_cpu_experimental_ynn_fusion_type": value}


def jit_init(module, rngs, *args, **static):
  """`module.init(rngs, *args, **static)` compiled as one program (`static`: Python values
  such as `train=False`). Eager `init` dispatches every initialiser op on its own, each
  compiled on first use: one program compiles far faster, with the same parameter values."""
  return jax.jit(functools.partial(module.init, **static))(rngs, *args)


def compile_cache_dir() -> str | None:
  """Where jaxrec's commands keep compiled programs between runs: $JAXREC_COMPILE_CACHE,
  else $XDG_CACHE_HOME/jaxrec/xla (~/.cache/jaxrec/xla); "off" (or "0", "") disables."""
  value = os.environ.get("JAXREC_COMPILE_CACHE")
  if value is None:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxrec", "xla")
  value = value.strip()
  return None if value.lower() in ("", "0", "off", "none") else os.path.expanduser(value)


def enable_compile_cache() -> str | None:
  """Turns on JAX's persistent compilation cache at `compile_cache_dir()` (least recently
  used entries evicted beyond 4 GiB), unless the process already set a cache directory.
  A run restarted after a crash, or the next run of the same config, then loads its
  compiled steps instead of compiling them again (on the 2-core CPU the Instruments preset
  compiles 14 train and 14 decode shapes, about 4.5 minutes). Returns the directory used."""
  path = compile_cache_dir()
  if path is None or jax.config.jax_compilation_cache_dir is not None:
    return jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_compilation_cache_max_size", 4 * 2**30)
  return path


def set_cpu_devices(n: int | None = None) -> int | None:
  """Splits the host into `n` XLA:CPU devices for this process (jaxrec's commands: their
  --cpu_devices flag); with `n` None, DEFAULT_CPU_DEVICES unless the environment already
  chose (JAX_NUM_CPU_DEVICES, or --xla_force_host_platform_device_count in XLA_FLAGS).
  Returns the count set (None: the environment's, or JAX already running). An explicit `n`
  must come before any JAX operation; only the CPU backend is affected (a GPU or TPU run
  keeps its devices).

  A run is data parallel over the mesh of every device (`training.run.make_mesh`), so on
  CPU each device takes its share of every batch. XLA:CPU runs a program's small batched
  dots (the attention's per-head products) and much element-wise work on one thread; two
  devices run two halves of the batch side by side and fill the idle core (the measured
  gain per history length: bench/README.md). The results are one device's up to the
  rounding of the sums across devices (the gradient, the metric totals); decoded items are
  the same.
  Batch sizes must be divisible by the count; SimCIT's 'local' negatives are per device.

  One caution for code of your own on several CPU devices: XLA:CPU (jax 0.10) deadlocks
  when dozens of programs with a cross-device reduction are dispatched without waiting
  (60 chained steps of a 2-device gradient step did; its rendezvous then aborts the process
  after 40 s). jaxrec's loops never have more than two in flight: training fetches each
  step's metrics when the next is dispatched, evaluation each batch's sums."""
  if n is None:
    if (jax.config.jax_num_cpu_devices != -1
        or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")):
      return None
    try:
      jax.config.update("jax_num_cpu_devices", DEFAULT_CPU_DEVICES)
    except RuntimeError:   # JAX already running (a notebook cell run again): its devices stay
      return None
    return DEFAULT_CPU_DEVICES
  if n < 1:
    raise ValueError(f"--cpu_devices={n}: must be >= 1")
  jax.config.update("jax_num_cpu_devices", n)
  return n
