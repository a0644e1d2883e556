"""Multi-process runs (jax.distributed, issue 17): two processes on localhost, one CPU
device each, against one process with two devices (the same global mesh of two devices, so
the same reductions in the same order: equal bit for bit)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest

from jaxrec.checkpoint import Checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CMD = [sys.executable, "-m", "jaxrec.train", "--config", "configs/tiger.py:tiny",
       "--config.train.epochs=1"]                 # 19 steps; one evaluation
ENV = dict(os.environ, JAX_PLATFORMS="cpu",
           JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or "")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(args, logs, tag):
  """Processes 0 and 1 of one multi-process run of `args` (a jaxrec command line)."""
  port = _free_port()
  procs = []
  for pid in (0, 1):
    f = open(logs / f"{tag}-p{pid}.txt", "w")
    procs.append(subprocess.Popen(
        args + ["--coordinator", f"127.0.0.1:{port}", "--num_processes", "2",
                "--process_id", str(pid), "--cpu_devices=1"],
        cwd=REPO, env=ENV, stdout=f, stderr=subprocess.STDOUT))
  return procs


def _wait(procs, logs, tag, timeout=600):
  deadline = time.time() + timeout
  for p in procs:
    try:
      p.wait(max(deadline - time.time(), 1))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail(f"{tag}: timed out\n" + _tail(logs, tag))
  return [p.returncode for p in procs]


def _tail(logs, tag):
  return "\n".join(f"--- {f.name}\n" + f.read_text()[-3000:] for f in sorted(logs.glob(f"{tag}-p*")))


def _checksums(workdir):
  """The meta checksums of the newest train checkpoint and of the best one."""
  import orbax.checkpoint as ocp
  out = []
  for name in ("train", "best"):
    c = Checkpoints(os.path.join(workdir, "checkpoints", name))
    step = c.steps()[-1]
    meta = c._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    out.append((name, step, meta["checksum"]))
    c.close()
  return out


def test_two_processes_equal_one_and_resume_after_a_kill(tmp_path):
  """Two processes train the tiny config (process 0 fits the tokenizer while process 1
  waits), are killed after a checkpoint (process 1 first), restarted and run to the end:
  results, train and best checkpoints equal one process with two devices, bit for bit."""
  two = str(tmp_path / "two")
  procs = _launch(CMD + ["--workdir", two], tmp_path, "first")
  marker = os.path.join(two, "checkpoints", "train", "10")
  deadline = time.time() + 400
  while not os.path.isdir(marker) and all(p.poll() is None for p in procs):
    assert time.time() < deadline, _tail(tmp_path, "first")
    time.sleep(0.05)
  assert all(p.poll() is None for p in procs), _tail(tmp_path, "first")
  procs[1].send_signal(signal.SIGKILL)
  procs[1].wait()
  procs[0].send_signal(signal.SIGKILL)
  procs[0].wait()
  assert not os.path.exists(os.path.join(two, "results.json"))

  # the reference: one process, two devices, on the same code table (copied, not refitted:
  # the fit is deterministic, and the table's fingerprint is checked when it is reused)
  ref = str(tmp_path / "one")
  os.makedirs(ref)
  for name in ("codes.npz", "codes.json", "tokenizer.msgpack"):
    shutil.copy(os.path.join(two, name), ref)
  out = subprocess.run(CMD + ["--workdir", ref, "--cpu_devices=2"], cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  expected = json.load(open(os.path.join(ref, "results.json")))
  assert expected["device"].endswith("x2")

  assert _wait(_launch(CMD + ["--workdir", two], tmp_path, "restart"), tmp_path,
               "restart") == [0, 0], _tail(tmp_path, "restart")
  log0 = (tmp_path / "restart-p0.txt").read_text()
  assert "resumed from" in log0 and "2 device(s)" in log0, log0[-2000:]
  assert "resumed from" not in (tmp_path / "restart-p1.txt").read_text()   # process 0 logs

  got = json.load(open(os.path.join(two, "results.json")))
  for key in ("best", "steps"):
    assert got[key] == expected[key]
  for split in ("valid", "test"):
    assert {k: v for k, v in got[split].items() if k != "decode_s"} == {
        k: v for k, v in expected[split].items() if k != "decode_s"}
  assert _checksums(two) == _checksums(ref)      # parameters and optimizer state, bit for bit
  lines = [json.loads(l) for l in open(os.path.join(two, "metrics.jsonl"))]
  ref_lines = [json.loads(l) for l in open(os.path.join(ref, "metrics.jsonl"))]
  steps = lambda ls: [l["step"] for l in ls if "compile" not in l]   # (compiles: per invocation)
  assert steps(lines) == steps(ref_lines)                             # each step once

  # evaluation across the two processes: the same metrics, written once
  cmd = [sys.executable, "-m", "jaxrec.evaluate", "--workdir", two]
  assert _wait(_launch(cmd, tmp_path, "eval"), tmp_path, "eval") == [0, 0], _tail(tmp_path, "eval")
  ev = json.load(open(os.path.join(two, "eval.json")))
  assert ev["test"]["ndcg@10"] == expected["test"]["ndcg@10"]
  assert ev["test"]["users"] == expected["test"]["users"]
