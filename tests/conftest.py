"""Shared test set-up: a persistent XLA compilation cache so identical programs compiled
by different tests (e.g. several tiny training runs) compile once per session, and XLA's
backend optimisation off (`--xla_backend_optimization_level=0`, also inherited by the
tests' subprocesses): the tests check behaviour, not speed, and compiling dominates them
(a tiny TIGER run on the 2-core CPU: 39.6 s, 29.5 of it compiling, against 26.5 / 15.2)."""
import os
import sys
import tempfile

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + TEST_XLA_FLAGS).strip()

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

_CACHE = os.environ.get("JAXREC_TEST_COMPILE_CACHE",
                        os.path.join(tempfile.gettempdir(), "jaxrec-test-xla-cache"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
os.environ["JAXREC_COMPILE_CACHE"] = _CACHE    # the commands the tests start share it
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))


def _with(cfg, **model):
  cfg.model.update(model)
  return cfg


class _Trained(dict):
  """{name: workdir} of tiny runs, each trained the first time a test asks for it (a test
  worker that never reads one does not train it)."""

  def __init__(self, tmp_path_factory):
    super().__init__()
    self._tmp = tmp_path_factory

  def __missing__(self, name):
    import sasrec as sasrec_config
    import tiger
    from jaxrec import pipeline
    cfg = {"tiger": lambda: tiger.get_config("tiny"),
           "decoder": lambda: tiger.get_config("tiny_decoder"),
           "items": lambda: _with(tiger.get_config("tiny"), head="items"),
           "sasrec": lambda: sasrec_config.get_config("tiny")}[name]()
    workdir = str(self._tmp.mktemp(name))
    pipeline.train_and_evaluate(cfg, workdir, log=lambda m: None)
    self[name] = workdir
    return workdir


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
  """A tiny TIGER, its decoder-only variant, TIGER with the "items" head and a tiny SASRec
  run, each trained once per session (per test worker) when first read: {name: workdir}."""
  return _Trained(tmp_path_factory)
