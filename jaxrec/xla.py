"""Per-program XLA compiler options for jaxrec's jitted steps, the persistent
compilation cache of jaxrec's commands, how many XLA:CPU devices they split a host into, and
`Program`: a step compiled ahead of time per input shape, its compilations reported.

On CPU, XLA (jax 0.10) hands fusions to YNNPACK; for this workload's shapes that was
slower for decoding (bench/speed.py on the 2-core dev CPU: 113 users/s with XLA's default
fusions, 154 without YNN fusions; training 161 vs 167 samples/s with YNN for dots only).
So decoding compiles without YNN fusions and training with YNN dot fusions only.
Options are passed per `jax.jit` (never through the global XLA_FLAGS) and only on the CPU
backend. JAXREC_XLA_CPU_YNN=<value> overrides both ("default" keeps XLA's own choice).
"""
from __future__ import annotations

import contextlib
import functools
import os
import time
from typing import Callable

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


# Who hears of each compilation: callables taking {"program", "shape", "seconds", "ahead",
# "from_cache"}.
_LISTENERS: list = []
_CACHE_HITS = [0]   # executables loaded from the persistent compilation cache, this process


def _count_cache_hit(event: str, **kwargs) -> None:
  if event == "/jax/compilation_cache/cache_hits":
    _CACHE_HITS[0] += 1


jax.monitoring.register_event_listener(_count_cache_hit)


def compile_summary(records: list) -> dict:
  """Programs compiled (`compile_listener`'s records): their count, how many XLA's persistent
  cache answered, and the seconds in all."""
  return {"count": len(records), "from_cache": sum(r["from_cache"] for r in records),
          "compile_seconds": round(sum(r["seconds"] for r in records), 1)}


@contextlib.contextmanager
def compile_listener(fn: Callable[[dict], None]):
  """Within the block, `fn` hears of every `Program` compilation (the loop writes them to
  the log and metrics.jsonl)."""
  _LISTENERS.append(fn)
  try:
    yield
  finally:
    _LISTENERS.remove(fn)


class Program:
  """A jitted function with one executable per input shape, compiled ahead of time:
  `compile(*args)` lowers and compiles it for `args`' shapes (`jit(...).lower(...).compile()`;
  XLA's persistent cache, when on, answers a program compiled before on this host); a call
  runs the executable of its arguments' shapes, compiling first on a miss (as `jax.jit`
  would, and reported the same way). The first argument (state or params) is taken to keep
  its shapes, so only the others' are looked at per call.

  A program's compilations are reported to `compile_listener`s: its name, the batch's shape,
  the seconds, whether it was compiled ahead (`compile`) or on a call, and whether XLA's
  persistent cache had it (then the seconds are tracing, lowering and loading)."""

  def __init__(self, name: str, jitted):
    self.name, self.jitted, self.executables = name, jitted, {}

  @staticmethod
  def _key(args) -> tuple:
    return tuple(getattr(x, "shape", None) for x in jax.tree.leaves(args[1:]))

  def _compile(self, key, args, ahead: bool):
    t0, hits = time.time(), _CACHE_HITS[0]
    self.executables[key] = exe = self.jitted.lower(*args).compile()
    batch = next((x.shape for x in jax.tree.leaves(args[1:]) if getattr(x, "ndim", 0) >= 2), ())
    record = {"program": self.name, "shape": list(batch), "seconds": round(time.time() - t0, 2),
              "ahead": ahead, "from_cache": _CACHE_HITS[0] > hits}
    for fn in list(_LISTENERS):
      fn(record)
    return exe

  def lower(self, *args):
    """The jitted function's lowering (to inspect its HLO or cost)."""
    return self.jitted.lower(*args)

  def compile(self, *args) -> float:
    """Compiles for `args`' shapes unless done; returns the seconds it took (0 if done)."""
    key = self._key(args)
    if key in self.executables:
      return 0.0
    t0 = time.time()
    self._compile(key, args, True)
    return time.time() - t0

  def __call__(self, *args):
    key = self._key(args)
    exe = self.executables.get(key)
    if exe is None:
      exe = self._compile(key, args, False)
    return exe(*args)
