"""The Colab notebooks run top to bottom on CPU with a tiny setting, so they cannot rot."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _execute(name, params, tmp_path, monkeypatch):
  nb = nbformat.read(os.path.join(REPO, "colab", name), as_version=4)
  cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
  cell.source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
  # The kernel shares the tests' XLA compilation cache (conftest.py) through the environment.
  import jax
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  return nb


def _outputs(nb):
  return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))


def test_quickstart_runs(tmp_path, monkeypatch):
  workdir = str(tmp_path / "quick")
  nb = _execute("quickstart.ipynb", {"VARIANT": "tiny", "WORKDIR": workdir}, tmp_path, monkeypatch)
  text = _outputs(nb)
  assert "test {'recall@5'" in text
  assert "rank  item  ID" in text
  assert os.path.exists(os.path.join(workdir, "results.json"))
  images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert len(images) == 2   # code usage and the run report


def test_tpu_notebook_runs_and_resumes(tmp_path, monkeypatch):
  workdir = str(tmp_path / "tpu")
  params = {"METHOD": "tiger", "VARIANT": "tiny", "DATA": None, "WORKDIR": workdir,
            "OVERRIDES": {"train.epochs": 1}}
  text = _outputs(_execute("tpu_train.ipynb", params, tmp_path, monkeypatch))
  assert "mesh {'data': 2}" in text   # a CPU split into two devices
  import jax
  assert f"compile cache {jax.config.jax_compilation_cache_dir}" in text   # the tests' cache
  assert "results.json, metrics.jsonl" in text
