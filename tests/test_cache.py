"""Derived data that can be damaged (jaxrec/cache.py): entries check their size and
checksum, a damaged or partial `cf` entry is rebuilt (its table equal to a clean one's),
two processes needing one entry build it once, a run killed while building leaves a claim
the next run takes over, and JAX's own compilation cache survives a damaged entry."""
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import letter
from jaxrec import cache, pipeline
from jaxrec.data import load_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def damage(path, how):
  """Truncates, empties or flips one bit of a file."""
  data = bytearray(open(path, "rb").read())
  if how == "truncated":
    data = data[:len(data) // 2]
  elif how == "zero-length":
    data = bytearray()
  else:                                     # one bit in the middle
    data[len(data) // 2] ^= 0x10
  open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("how,found", [("truncated", "(truncated)"),
                                       ("zero-length", "0 bytes where"),
                                       ("bit-flipped", "checksum differs")])
def test_check_finds_each_kind_of_damage(tmp_path, how, found):
  path, side = str(tmp_path / "x.npy"), str(tmp_path / "x.json")
  np.save(path, np.arange(1000, dtype=np.float32))
  cache.seal(path, side, {"what": "test"})
  assert cache.check(path, side) is None and cache.read_sidecar(side)["what"] == "test"
  damage(path, how)
  assert found in cache.check(path, side)
  os.remove(side)
  assert "never finished" in cache.check(path, side)
  assert cache.check(str(tmp_path / "none.npy"), side) == "missing"


def test_claim_waits_for_its_holder_then_takes_over_a_dead_one(tmp_path):
  lock, log, order = str(tmp_path / "e.lock"), [], []

  def hold():
    with cache.Claim(lock, log.append):
      order.append("first in")
      time.sleep(0.5)
      order.append("first out")

  t = threading.Thread(target=hold)
  t.start()
  while not os.path.exists(lock):
    time.sleep(0.01)
  with cache.Claim(lock, log.append):
    order.append("second in")
  t.join()
  assert order == ["first in", "first out", "second in"]
  assert any("is building this entry; waiting" in l for l in log) and not os.path.exists(lock)
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  with open(lock, "w") as f:                      # left by a killed run
    json.dump({"pid": dead.pid, "host": __import__("socket").gethostname(), "time": 0}, f)
  log.clear()
  with cache.Claim(lock, log.append):
    pass
  assert any(f"its process {dead.pid} is gone" in l and "taken over" in l for l in log), log


def test_compile_cache_entry_damage_costs_a_recompile(tmp_path):
  """JAX reads its persistent cache defensively: jaxrec adds nothing there."""
  script = textwrap.dedent(f"""
      import jax, jax.numpy as jnp
      jax.config.update("jax_compilation_cache_dir", {str(tmp_path / 'xla')!r})
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
      jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
      print(float(jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).sum()))""")
  first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
  entries = os.listdir(tmp_path / "xla")
  assert first.returncode == 0 and entries
  for e in entries:
    damage(str(tmp_path / "xla" / e), "truncated")
  again = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
  assert again.returncode == 0 and again.stdout == first.stdout, again.stderr[-2000:]


# ------------------------------------------------------------------------- the cf entry
def cf_config(cache_dir):
  cfg = letter.get_config("tiny")
  cfg.data.features = ("content",)          # `cf` left out: derived by SASRec
  cfg.cf.cache_dir = cache_dir
  return cfg


@pytest.fixture(scope="module")
def clean_cf(tmp_path_factory):
  """A clean cache: (its folder, the derived table, the data set)."""
  root = str(tmp_path_factory.mktemp("cf") / "clean")
  cfg = cf_config(root)
  ds = load_dataset(cfg.data)
  table = pipeline.cf_embeddings(cfg, ds, log=lambda m: None)
  return root, table, ds


def entry(root):
  (name,) = [d for d in os.listdir(root) if d.startswith("sasrec-") and os.path.isdir(
      os.path.join(root, d))]
  run = os.path.join(root, name)
  (npy,) = [f for f in os.listdir(run) if f.endswith(".npy")]
  return run, os.path.join(run, npy)


def remove(path):
  (shutil.rmtree if os.path.isdir(path) else os.remove)(path)


CASES = {   # what is done to a finished entry -> a line of what the rerun did
    "table missing": (["npy"], [], "missing; resuming the SASRec run"),
    "table truncated": ([], [("npy", "truncated")], "(truncated); resuming"),
    "table bit-flipped": ([], [("npy", "bit-flipped")], "checksum differs"),
    "seal missing": (["cf.json"], [], "never finished"),
    "results missing": (["results.json"], [], "no results.json"),
    "best checkpoint and table missing": (["checkpoints/best", "npy"], [],
                                          "cannot be resumed"),
    "train checkpoints and table missing": (["checkpoints/train", "npy"], [], "resuming"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_damaged_cf_entry_is_rebuilt_equal(clean_cf, tmp_path, case):
  root, table, ds = clean_cf
  mine = str(tmp_path / "cache")
  shutil.copytree(root, mine)
  run, npy = entry(mine)
  gone, damaged, said = CASES[case]
  for name in gone:
    remove(npy if name == "npy" else os.path.join(run, name))
  for name, how in damaged:
    damage(npy if name == "npy" else os.path.join(run, name), how)
  logs = []
  again = pipeline.cf_embeddings(cf_config(mine), ds, log=logs.append)
  np.testing.assert_array_equal(again, table)
  assert any(said in l for l in logs), logs[:6]
  assert cache.check(npy, os.path.join(run, "cf.json")) is None     # sealed again


def test_an_old_entry_without_checksums_is_reused_and_sealed(clean_cf, tmp_path):
  root, table, ds = clean_cf
  mine = str(tmp_path / "cache")
  shutil.copytree(root, mine)
  run, npy = entry(mine)
  os.remove(os.path.join(run, "cf.json"))
  with open(os.path.join(run, "cf.json"), "w") as f:
    json.dump({"sasrec_run": run}, f)           # as if written before checksums
  logs = []
  np.testing.assert_array_equal(pipeline.cf_embeddings(cf_config(mine), ds, logs.append), table)
  assert any("cf: reusing" in l for l in logs) and "sha256" in cache.read_sidecar(
      os.path.join(run, "cf.json"))


DERIVE = textwrap.dedent("""
    import os, sys, time
    import jax
    sys.path.insert(0, os.path.join({repo!r}, "configs"))
    jax.config.update("jax_compilation_cache_dir", os.environ["JAXREC_COMPILE_CACHE"])
    import numpy as np
    import letter
    from jaxrec import pipeline
    from jaxrec.data import load_dataset
    cfg = letter.get_config("tiny")
    cfg.data.features = ("content",)
    cfg.cf.cache_dir = sys.argv[1]
    ds = load_dataset(cfg.data)
    table = pipeline.cf_embeddings(cfg, ds, log=lambda m: print(m, flush=True))
    np.save(sys.argv[2], table)
    """).format(repo=REPO)


def start(cache_dir, out, log):
  return subprocess.Popen([sys.executable, "-c", DERIVE, cache_dir, out], stdout=open(log, "w"),
                          stderr=subprocess.STDOUT)


def test_two_processes_on_an_empty_cache_build_cf_once(clean_cf, tmp_path):
  _, table, _ = clean_cf
  cache_dir = str(tmp_path / "cache")
  procs = [start(cache_dir, str(tmp_path / f"{i}.npy"), str(tmp_path / f"{i}.log"))
           for i in range(2)]
  assert [p.wait(timeout=600) for p in procs] == [0, 0]
  logs = [open(tmp_path / f"{i}.log").read() for i in range(2)]
  assert sum("training SASRec" in l for l in logs) == 1, logs
  assert sum("cf: reusing" in l for l in logs) == 1
  for i in range(2):
    np.testing.assert_array_equal(np.load(tmp_path / f"{i}.npy"), table)
  assert len([d for d in os.listdir(cache_dir) if d.startswith("sasrec-")]) == 1   # no lock left


def test_killed_inside_the_cf_stage_the_rerun_equals_an_uninterrupted_run(clean_cf, tmp_path):
  _, table, _ = clean_cf
  cache_dir, rng, inside = str(tmp_path / "cache"), random.Random(34), []
  for attempt in range(2):                     # two kills at random moments, then a finish
    log = str(tmp_path / f"kill{attempt}.log")
    p = start(cache_dir, str(tmp_path / "k.npy"), log)
    deadline = time.time() + 300
    # the SASRec's train program compiled, its 2 epochs, test decode and seal take about
    # 2.3 s on 2 idle cores with a warm compile cache: a kill within 1.5 s of that line
    while "compiled train" not in open(log).read():
      if p.poll() is not None:                 # an earlier kill came after the stage ended:
        break                                  # this start reused the finished entry
      assert time.time() < deadline, open(log).read()[-2000:]
      time.sleep(0.02)
    if p.poll() is None:
      time.sleep(rng.uniform(0.0, 1.5))
      p.kill()
    inside.append(p.wait() != 0 and not any(f == "cf.json" for _, _, fs in os.walk(cache_dir)
                                            for f in fs))
  assert any(inside), "no kill landed inside the cf stage: lengthen the training"
  p = start(cache_dir, str(tmp_path / "k.npy"), str(tmp_path / "final.log"))
  assert p.wait(timeout=600) == 0, open(tmp_path / "final.log").read()[-3000:]
  final = open(tmp_path / "final.log").read()
  assert "taken over" in final or "cf: reusing" in final, final[:2000]
  np.testing.assert_array_equal(np.load(tmp_path / "k.npy"), table)
