"""What every command (`train`, `evaluate`, `tokenize`, `data`, `embed`) shares: flags whose
mistakes are one line, and one line with exit code 2 for any expected failure (bad data,
bad config, a non-finite loss, ...); an unexpected failure keeps its traceback and says it
is a bug.

  if __name__ == "__main__":
    cli.run(main)
"""
from __future__ import annotations

import os
import sys
import traceback

from absl import app, flags, logging

from jaxrec import distributed
from jaxrec.config import load_config_module
from jaxrec.errors import JaxrecError
from jaxrec.xla import enable_compile_cache, set_cpu_devices

# what a command reports in one line: jaxrec's own failures and a non-finite loss
EXPECTED = (JaxrecError, FloatingPointError)


def fail(message: str, code: int = 2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def _config_arg(argv):
  """The --config value (path[:variant]) of argv, or None."""
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a.split("=", 1)[1]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def unknown_override(argv, cfg) -> str | None:
  """The first `--config.a.b=...` of argv naming a key `cfg` does not have, as a message."""
  for a in argv:
    if not a.startswith("--config."):
      continue
    path = a[len("--config."):].split("=", 1)[0].split(".")
    node, walked = cfg, []
    for key in path:
      if not hasattr(node, "keys") or key not in node:
        where = ".".join(walked) or "the config"
        have = sorted(node.keys()) if hasattr(node, "keys") else []
        hint = f" ({where} has: {', '.join(have)})" if have else ""
        return f"{a.split('=', 1)[0]}: unknown config key {key!r}{hint}"
      node, walked = node[key], walked + [key]
  return None


def parse_flags(argv):
  """absl's flag parsing, with one-line errors for a bad flag, a missing config file or an
  override of a key the config does not have."""
  try:
    rest = flags.FLAGS(argv)
    if "config" in flags.FLAGS:
      getattr(flags.FLAGS.config, "keys")            # config_flags defers a load failure
    return rest
  except Exception as e:                               # noqa: BLE001 - reported in one line
    spec = _config_arg(argv[1:])
    if spec is not None:
      path, _, variant = spec.partition(":")
      if not os.path.exists(path):
        fail(f"--config={spec}: no such config file {path!r}")
      try:
        cfg = load_config_module(path).get_config(*([variant] if variant else []))
      except Exception as e2:                          # noqa: BLE001
        fail(f"--config={spec}: {e2}")
      message = unknown_override(argv[1:], cfg)
      if message:
        fail(message)
    text = str(e).strip().splitlines()
    fail(text[-1] if text else type(e).__name__)


def define_distributed_flags():
  """--coordinator / --num_processes / --process_id of a multi-process run (jaxrec/distributed.py);
  on TPU pods, SLURM and Open MPI they are detected and need not be given. --cpu_devices: the
  XLA:CPU devices a process splits its host into (`xla.set_cpu_devices`)."""
  flags.DEFINE_integer("cpu_devices", None, "CPU runs: devices to split the host into, each "
                       "taking its share of every batch (default 2, or the environment's "
                       "JAX_NUM_CPU_DEVICES); 1: the whole batch on one.", lower_bound=1)
  flags.DEFINE_string("coordinator", None, "Multi-process runs: process 0's host:port.")
  flags.DEFINE_integer("num_processes", None, "Multi-process runs: how many processes.")
  flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index (0 writes).")


def _initialize_devices():
  """This process's devices, before any JAX operation: the CPU split (--cpu_devices), then
  the multi-controller runtime of a multi-process run."""
  if "num_processes" not in flags.FLAGS:
    return
  f = flags.FLAGS
  set_cpu_devices(f.cpu_devices)
  try:
    distributed.initialize(f.coordinator, f.num_processes, f.process_id)
  except Exception as e:                               # noqa: BLE001 - reported in one line
    fail(f"jax.distributed could not start (--coordinator={f.coordinator} "
         f"--num_processes={f.num_processes} --process_id={f.process_id}): "
         f"{str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}")


def guarded(main):
  """main(argv) with expected failures as one line (exit 2) and unexpected ones marked."""
  def wrapper(argv):
    logging.set_verbosity(logging.WARNING)         # not jax's backend probing at INFO
    _initialize_devices()
    enable_compile_cache()
    try:
      return main(argv)
    except EXPECTED as e:
      fail(str(e))
    except (KeyboardInterrupt, SystemExit):
      raise
    except Exception:                                  # noqa: BLE001
      traceback.print_exc()
      fail("the failure above was not expected: it is a bug in jaxrec; please report it with "
           "the command and the traceback", code=1)
  return wrapper


def run(main):
  app.run(guarded(main), flags_parser=parse_flags)
