"""Shared test set-up: a persistent XLA compilation cache so identical programs compiled
by different tests (e.g. several tiny training runs) compile once per session."""
import os
import sys
import tempfile

import jax

_CACHE = os.environ.get("JAXREC_TEST_COMPILE_CACHE",
                        os.path.join(tempfile.gettempdir(), "jaxrec-test-xla-cache"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
