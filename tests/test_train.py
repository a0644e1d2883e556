"""Training loop: loss goes down, kill-and-resume equals an uninterrupted run, damaged
checkpoints fall back, multi-device equals single-device, the CLI runs."""
import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiger
from jaxrec import pipeline
from jaxrec.checkpoint import Checkpoints
from jaxrec.errors import ConfigMismatchError
from jaxrec.training import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**train):
  cfg = tiger.get_config("tiny")
  cfg.train.update(train)
  return cfg


def _final_state_checksum(workdir):
  c = Checkpoints(os.path.join(workdir, "checkpoints", "train"))
  step = c.steps()[-1]
  import orbax.checkpoint as ocp
  raw = c._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
  return step, raw["meta"]["checksum"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("full"))
  results = pipeline.train_and_evaluate(tiny_config(), workdir, log=lambda m: None)
  return workdir, results


def test_run_writes_outputs_and_learns(uninterrupted):
  workdir, results = uninterrupted
  for name in ("config.json", "metrics.jsonl", "results.json", "codes.npz", "report.png",
               "code_usage.png", "synthetic.index.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  losses = [l["loss"] for l in lines if "loss" in l]
  assert losses[-1] < losses[0], losses  # a few steps lower the loss
  for split in ("valid", "test"):
    assert 0.0 <= results[split]["recall@10"] <= 1.0
    assert results[split]["recall@10"] >= results[split]["recall@5"]
  assert results["popularity"]["test"]["recall@10"] >= 0.0


def read_events(folder):
  """{tag: [(step, value)]} of the TensorBoard event files in `folder` (TFRecord frames)."""
  import struct
  from tensorboardX.proto import event_pb2
  out = {}
  for name in sorted(os.listdir(folder)):
    data = open(os.path.join(folder, name), "rb").read()
    pos = 0
    while pos < len(data):
      (n,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      for v in event.summary.value:
        out.setdefault(v.tag, []).append((event.step, v.simple_value))
  return out


def test_rerunning_a_finished_run_compiles_no_train_step(uninterrupted, tmp_path):
  """A run that already ended (here: its epochs done) reruns to its results without
  compiling a training program ahead (they would never run)."""
  import shutil
  workdir = str(tmp_path / "again")
  shutil.copytree(uninterrupted[0], workdir)
  logs = []
  results = pipeline.train_and_evaluate(tiny_config(), workdir, log=logs.append)
  assert not [m for m in logs if m.startswith("compiled train")], logs
  assert any(m.startswith("resumed from") for m in logs), logs
  strip = lambda r: {k: v for k, v in r.items() if not k.endswith("_s")}   # (timings)
  assert strip(results["test"]) == strip(uninterrupted[1]["test"])


def test_training_metrics_are_also_tensorboard_events(uninterrupted):
  workdir, _ = uninterrupted
  events = read_events(os.path.join(workdir, "tensorboard"))
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  losses = [(l["step"], l["loss"]) for l in lines if "loss" in l]
  valid = [(l["step"], l["ndcg@10"]) for l in lines if l.get("split") == "valid"]
  assert [s for s, _ in events["train/loss"]] == [s for s, _ in losses]
  np.testing.assert_allclose([v for _, v in events["train/loss"]], [v for _, v in losses],
                             rtol=1e-6)
  tb_valid = events["valid/ndcg_10"]              # (TensorBoard's tags write @ as _)
  np.testing.assert_allclose([v for _, v in tb_valid], [v for _, v in valid], rtol=1e-6)


def test_kill_and_resume_equals_uninterrupted(uninterrupted, tmp_path, monkeypatch):
  full_dir, full = uninterrupted
  workdir = str(tmp_path / "resumed")
  real = loop.check_and_log

  def crash(pending, *a, **k):
    if pending[0] == 23:  # dies between checkpoints (save_every=10): resumes from step 20
      raise KeyboardInterrupt("simulated kill")
    return real(pending, *a, **k)

  monkeypatch.setattr(loop, "check_and_log", crash)
  with pytest.raises(KeyboardInterrupt):
    pipeline.train_and_evaluate(tiny_config(), workdir, log=lambda m: None)
  monkeypatch.setattr(loop, "check_and_log", real)
  logs = []
  resumed = pipeline.train_and_evaluate(tiny_config(), workdir, log=logs.append)
  assert any("resumed from" in l and "step 20" in l for l in logs), logs
  for split in ("valid", "test"):
    assert resumed[split] == {**full[split], "decode_s": resumed[split]["decode_s"]}
  assert _final_state_checksum(workdir) == _final_state_checksum(full_dir)
  # the log holds each step once, as in the uninterrupted run (and each invocation's
  # compilations: the killed one's, and the resumed one's ahead of its first step)
  records = lambda d: [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl"))]
  steps = lambda d: [r.get("step") for r in records(d) if "compile" not in r]
  assert steps(workdir) == steps(full_dir)
  compiled = [(r["step"], r["compile"], r["ahead"]) for r in records(workdir) if "compile" in r]
  assert ("train", True) in {c[1:] for c in compiled if c[0] == 0}
  assert ("train", True) in {c[1:] for c in compiled if c[0] == 20}    # again after the resume
  programs = resumed["programs_this_invocation"]          # the tests' compile cache has them
  assert programs["count"] >= 2 and programs["from_cache"] == programs["count"]


@pytest.mark.parametrize("name,how", [("codes.npz", "bit-flipped"), ("codes.json", "truncated"),
                                      ("tokenizer.msgpack", "bit-flipped")])
def test_a_damaged_code_table_costs_a_refit_not_a_crash(uninterrupted, tmp_path, name, how):
  import shutil
  from test_cache import damage
  full_dir, full = uninterrupted
  workdir = str(tmp_path / "copy")
  shutil.copytree(full_dir, workdir)
  damage(os.path.join(workdir, name), how)
  logs = []
  again = pipeline.train_and_evaluate(tiny_config(), workdir, log=logs.append)
  assert any(name in l and "moved aside" in l and "fitted again" in l for l in logs), logs[:4]
  for split in ("valid", "test"):
    assert again[split] == {**full[split], "decode_s": again[split]["decode_s"]}


def test_damaged_latest_checkpoint_falls_back(tmp_path, capsys):
  c = Checkpoints(str(tmp_path / "ck"), max_to_keep=3)
  tree = {"w": jnp.arange(6.0), "b": jnp.ones(2)}
  c.save(1, tree, {"note": 1})
  c.save(2, jax.tree.map(lambda x: x + 1, tree), {"note": 2})
  for root, _, files in os.walk(tmp_path / "ck" / "2" / "state"):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"garbage")
  step, state, meta = c.restore(tree)
  assert step == 1 and meta["note"] == 1
  chex.assert_trees_all_equal(state, tree)
  assert "could not be restored" in capsys.readouterr().out


def test_saving_a_step_again_replaces_it(tmp_path):
  c = Checkpoints(str(tmp_path / "ck"), max_to_keep=2)
  tree = {"w": jnp.arange(3.0)}
  c.save(5, tree, {"evals": []})
  c.save(5, tree, {"evals": [1]})  # e.g. the epoch-end save after a periodic one
  assert c.steps() == [5]
  assert c.restore(tree)[2]["evals"] == [1]


def test_changed_config_in_same_workdir_is_refused(uninterrupted):
  workdir, _ = uninterrupted
  with pytest.raises(ConfigMismatchError, match="train.lr"):
    pipeline.train_and_evaluate(tiny_config(lr=0.5), workdir, log=lambda m: None)


@pytest.mark.parametrize("method", ["tiger", "letter", "etegrec", "siit"])
def test_a_run_saved_by_an_older_version_resumes(tmp_path, method):
  """config.json files the claims queue's runs wrote weeks of commits ago (before most of
  config.ADDED_KEYS, `train.shard_params` and `cf.train.shard_params` among them) are the
  same runs as today's `scientific` configs: their workdirs resume."""
  import importlib
  saved = os.path.join(os.path.dirname(__file__), "fixtures", "saved_configs",
                       f"{method}-scientific.json")
  with open(saved) as f:
    old = json.load(f)
  cfg = importlib.import_module(method).get_config("scientific")
  cfg.data.dir = old["data"]["dir"]  # the machine's data path, not the run's
  if method == "etegrec":
    cfg.etegrec.warmup_frac = 0.0    # that run's warm-up: the step counts (the share came later)
    cfg.data.whole_updates = False   # and its epochs' batches (whole updates came later)
    cfg.etegrec.short_rows = 0.0     # and its padding (each batch whole: short rows came later)
    # and its pre-training (Flax's MLP, k-means on the catalogue, 25 iterations, full last
    # batches: the official Xavier MLP, first-batch k-means of 100, short last batch came later)
    cfg.tokenizer.init, cfg.tokenizer.kmeans_sample, cfg.tokenizer.kmeans_iters = "flax", "catalogue", 25
    cfg.tokenizer.last_batch = "wrap"
  else:
    cfg.train.patience = 5           # that run's early stopping (15 came later; ETEGRec's had 15)
  if method == "siit":
    cfg.siit.align_loss = "sum"      # that run's alignment weighting (the per-sample mix came later)
    cfg.siit.movers = "any"          # and its moving rule ('better' came later)
  (tmp_path / "config.json").write_text(json.dumps(old))
  pipeline.check_config(cfg, str(tmp_path))
  if method == "siit":               # without rounds, the refinement settings are neutral
    cfg.siit.movers, cfg.siit.keep_margin = "better", 2.0
    with pytest.raises(ConfigMismatchError, match="siit.keep_margin, siit.movers"):
      pipeline.check_config(cfg, str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**old, "siit": {**old["siit"], "rounds": 0}}))
    cfg.siit.rounds = 0
    pipeline.check_config(cfg, str(tmp_path))
  cfg.train.lr *= 2
  with pytest.raises(ConfigMismatchError, match="train.lr"):
    pipeline.check_config(cfg, str(tmp_path))


MULTI = r"""
import functools, jax, jax.numpy as jnp, numpy as np, sys
sys.path.insert(0, "configs")
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import tiger
from jaxrec import pipeline
from jaxrec.data import BatchIterator
from jaxrec.methods.base import init_t5
from jaxrec.optim import TrainState, make_optimizer
from jaxrec.recommender import steps
assert len(jax.devices()) == 4, jax.devices()
cfg = tiger.get_config("tiny")
run = pipeline.setup(cfg, sys.argv[1], log=lambda m: None)
tx = make_optimizer(1e-2, 0.0, 100, 0, 1.0)
params = init_t5(run, jax.random.key(0))
losses = {}
for n in (1, 4):
  mesh = Mesh(np.array(jax.devices()[:n]), ("data",))
  rep, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  state = jax.device_put(TrainState(jnp.zeros((), jnp.int32), params, tx.init(params)), rep)
  fn = jax.jit(functools.partial(steps.train_step, model=run.model, tx=tx), out_shardings=rep)
  it = BatchIterator(run.dataset, run.splits["train"], 64, run.buckets, shuffle=True, seed=0)
  codes = jax.device_put(run.codes, rep)
  out = []
  for i, batch in zip(range(6), it.epoch_batches()):
    state, m = fn(state, jax.device_put(batch, shard), codes, jax.random.key(1))
    out.append(float(m["loss"]))
  assert len(state.params["params"]["embed"].sharding.device_set) == n
  losses[n] = out
print("LOSSES", losses[1], losses[4])
# Same batch, same params: the first loss agrees to float rounding. Later steps differ
# only by the order of the cross-device gradient sum, which Adam's normalisation amplifies.
np.testing.assert_allclose(losses[1][0], losses[4][0], rtol=1e-6)
np.testing.assert_allclose(losses[1], losses[4], rtol=1e-3)
# Decoding per device (distributed.per_device_eval): the same items as on one device, the
# metric sums to rounding, and no all-gather of the beams' scores between the devices.
from jaxrec import distributed
from jaxrec.data import eval_batches
batch = next(iter(eval_batches(run.dataset, run.splits["test"], 64, run.buckets)))
decoded = {}
for n in (1, 4):
  mesh = Mesh(np.array(jax.devices()[:n]), ("data",))
  rep, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  fn = distributed.per_device_eval(functools.partial(
      steps.eval_step, model=run.model, beam=cfg.train.beam), mesh)
  args = (jax.device_put(params, rep), jax.device_put(batch, shard),
          jax.device_put(run.codes, rep), jax.device_put(run.tables, rep))
  decoded[n] = jax.device_get(fn(*args))
  if n == 4:
    assert "all-gather" not in fn.lower(*args).compile().as_text()
np.testing.assert_array_equal(decoded[1][1], decoded[4][1])
for k in decoded[1][0]:
  np.testing.assert_allclose(decoded[1][0][k], decoded[4][0][k], rtol=1e-6)
assert decoded[1][0]["count"] == float(batch["weight_B"].sum()) > 0
# train.shard_params (FSDP-style) on the decoder-only model: parameters and Adam moments
# split over the 4 devices, the same losses as replicated parameters (to the sum's order).
from jaxrec.methods.base import get_method
losses, spec = {}, {}
for shard in (False, True):
  cfg = tiger.get_config("tiny_decoder")
  cfg.train.shard_params = shard
  run = pipeline.setup(cfg, sys.argv[1] + str(shard), log=lambda m: None)
  plan = get_method("tiger").training_plan(run, jax.random.key(0), 10)
  step, state = plan.stages[0].step(0), plan.state
  it = BatchIterator(run.dataset, run.splits["train"], 64, run.buckets, shuffle=True, seed=0)
  out = []
  for i, batch in zip(range(4), it.epoch_batches()):
    state, m = step(state, run.shard(batch), run.codes, jax.random.key(1))
    out.append(float(m["loss"]))
  losses[shard] = out
  spec[shard] = (state.params["params"]["embed"].sharding.spec,
                 state.opt_state[1][0].mu["params"]["embed"].sharding.spec)
print("FSDP", losses, spec)
# the embedding [V, 32] split along its width (the larger axis 4 divides), moments alike
assert spec[True] == (jax.sharding.PartitionSpec(None, "data"),) * 2, spec
assert spec[False] == (jax.sharding.PartitionSpec(),) * 2, spec
np.testing.assert_allclose(losses[False][0], losses[True][0], rtol=1e-6)
np.testing.assert_allclose(losses[False], losses[True], rtol=1e-3)
print("MULTI_OK")
"""


def test_multi_device_matches_single_device(tmp_path):
  """Four CPU devices: data-parallel steps and per-device decoding equal one device's, and
  train.shard_params (FSDP) trains the decoder-only model as replicated parameters do."""
  flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", JAXREC_CPU_DEVICES="4")
  out = subprocess.run([sys.executable, "-c", MULTI, str(tmp_path / "w")], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
  assert "MULTI_OK" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]


def test_cli_train_then_evaluate(uninterrupted, tmp_path):
  """The command evaluates on two CPU devices (its default) what was trained on one: the
  best checkpoint is restored onto the evaluating run's mesh."""
  workdir, results = uninterrupted
  out = subprocess.run([sys.executable, "-m", "jaxrec.evaluate", "--workdir", workdir], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  ev = json.load(open(os.path.join(workdir, "eval.json")))
  assert ev["test"]["ndcg@10"] == pytest.approx(results["test"]["ndcg@10"], abs=1e-6)
  assert "test: " in out.stdout
  bad = subprocess.run([sys.executable, "-m", "jaxrec.data", "--config", "configs/tiger.py:instruments",
                        "--config.data.dir", str(tmp_path)], cwd=REPO, capture_output=True,
                       text=True, timeout=600)
  assert bad.returncode == 2
  assert bad.stderr.strip().startswith("error: ") and "Instruments.inter.json: file not found" in bad.stderr
  assert len(bad.stderr.strip().splitlines()) == 1


def test_non_finite_state_is_never_saved(tmp_path):
  """A diverging run (lr 1e6) stops before saving a NaN / Inf state: the newest checkpoint
  stays the last finite one, and a rerun resumes from it and stops again, never rotating
  the finite checkpoints out."""
  import numpy as np
  cfg = tiny_config(lr=1e6, save_every=1)
  workdir = str(tmp_path / "nan")
  # the step's loss is checked before its checkpoint is saved, the whole state on saving
  non_finite = r"(training loss is (nan|inf)|the training state is not finite) at step \d+ \(stage train"
  with pytest.raises(FloatingPointError, match=non_finite):
    pipeline.train_and_evaluate(cfg, workdir, log=lambda m: None)
  ckpt = Checkpoints(os.path.join(workdir, "checkpoints", "train"))
  steps = ckpt.steps()
  assert steps, "the finite steps before the divergence are kept"
  import orbax.checkpoint as ocp
  for s in steps:   # read the arrays as written (no abstract state: optax's tuples become lists)
    tree = ckpt._mgr.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree)
               if np.issubdtype(np.asarray(x).dtype, np.floating)), s
  with pytest.raises(FloatingPointError):
    pipeline.train_and_evaluate(cfg, workdir, log=lambda m: None)
  assert Checkpoints(os.path.join(workdir, "checkpoints", "train")).steps() == steps


def test_non_finite_tokenizer_loss_stops_the_fit(tmp_path):
  cfg = tiny_config()
  cfg.tokenizer.lr = 1e6
  with pytest.raises(FloatingPointError, match=r"tokenizer loss is (nan|inf) at epoch \d+"):
    pipeline.train_and_evaluate(cfg, str(tmp_path / "tok"), log=lambda m: None)
  assert not os.path.exists(tmp_path / "tok" / "codes.npz")


def test_every_checkpoint_damaged_says_none_is_left(tmp_path, capsys):
  c = Checkpoints(str(tmp_path / "ck"), max_to_keep=2)
  tree = {"w": jnp.arange(4.0)}
  c.save(1, tree, {})
  for root, _, files in os.walk(tmp_path / "ck" / "1" / "state"):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"garbage")
  assert c.restore(tree) is None
  out = capsys.readouterr().out
  assert "no older one is left" in out and "falling back" not in out


def test_missing_best_and_partial_saves_are_reported(uninterrupted, tmp_path):
  import shutil
  from jaxrec.errors import CheckpointError
  full_dir, _ = uninterrupted
  workdir = str(tmp_path / "w")
  shutil.copytree(full_dir, workdir)
  # evaluate with no best/: one line, and no empty best/ folder is created
  shutil.rmtree(os.path.join(workdir, "checkpoints", "best"))
  out = subprocess.run([sys.executable, "-m", "jaxrec.evaluate", "--workdir", workdir], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 2 and out.stderr.strip().splitlines() == [
      f"error: {workdir}/checkpoints/best: no usable checkpoint (train first: python -m "
      f"jaxrec.train --workdir {workdir})"], out.stderr[-2000:]
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "best"))
  # evaluate with every best checkpoint damaged: said so, not "train first"
  damaged = str(tmp_path / "damaged")
  shutil.copytree(full_dir, damaged)
  for root, _, files in os.walk(os.path.join(damaged, "checkpoints", "best")):
    for f in files:
      if "state" in root:
        with open(os.path.join(root, f), "wb") as fh:
          fh.write(b"garbage")
  out = subprocess.run([sys.executable, "-m", "jaxrec.evaluate", "--workdir", damaged], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 2 and out.stderr.strip().splitlines()[-1] == (
      f"error: {damaged}/checkpoints/best: every checkpoint is damaged (see the warnings above); "
      "train again in a new workdir: python -m jaxrec.train --workdir NEW_DIR"), out.stderr[-2000:]
  # train on a workdir whose best/ is gone: refused at resume, before any work
  with pytest.raises(CheckpointError, match=r"checkpoints/best: the best checkpoint \(step \d+\) "
                     "this run recorded is missing"):
    pipeline.train_and_evaluate(tiny_config(), workdir, log=lambda m: None)
  # an interrupted save (orbax's tmp folder) is named when the run resumes
  shutil.rmtree(workdir)
  shutil.copytree(full_dir, workdir)
  train_dir = os.path.join(workdir, "checkpoints", "train")
  last = max(int(n) for n in os.listdir(train_dir) if n.isdigit())
  os.rename(os.path.join(train_dir, str(last)),
            os.path.join(train_dir, f"{last + 1}.orbax-checkpoint-tmp-1234"))
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 3, "loss": 1.2')               # a line torn by a kill mid-write
  logs = []
  pipeline.train_and_evaluate(tiny_config(), workdir, log=logs.append)
  assert any(f"{last + 1}.orbax-checkpoint-tmp-1234: a save interrupted" in l for l in logs), logs
  lines = open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()
  assert all(json.loads(l) for l in lines) and '"loss": 1.2' not in lines[-1]


def test_sigkill_at_every_phase_resumes_to_the_same_result(uninterrupted, tmp_path):
  """`kill -9` of `python -m jaxrec.train` during the tokenizer fit, training, validation
  and the final test, each followed by a restart: the end result equals the uninterrupted
  run bit for bit (test metrics, and the final train state's checksum)."""
  import glob
  import random
  import signal
  import time
  full_dir, full = uninterrupted
  workdir = str(tmp_path / "killed")
  metrics = os.path.join(workdir, "metrics.jsonl")

  def n_valid():
    if not os.path.exists(metrics):
      return 0
    return sum('"split": "valid"' in l for l in open(metrics))

  phases = [  # (what, the marker that the process is in that phase)
      ("tokenizer fit", lambda: glob.glob(os.path.join(workdir, "checkpoints", "tokenizer-*", "10"))
       or os.path.exists(os.path.join(workdir, "codes.npz"))),   # (or the fit was too quick)
      ("training", lambda: os.path.isdir(os.path.join(workdir, "checkpoints", "train", "10"))),
      ("validation", lambda: n_valid() >= 1),
      ("final test", lambda: n_valid() >= 2),
  ]
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or "")
  cmd = [sys.executable, "-m", "jaxrec.train", "--config", "configs/tiger.py:tiny",
         "--workdir", workdir, "--cpu_devices=1"]    # one device, as the in-process run
  rng = random.Random(0)
  killed = []
  for what, marker in phases:
    err = tmp_path / f"stderr-{len(killed)}-{what.replace(' ', '_')}.txt"
    with open(err, "w") as err_f:
      proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err_f)
      deadline = time.time() + 300
      while proc.poll() is None and not marker() and time.time() < deadline:
        time.sleep(0.02)
      time.sleep(rng.uniform(0.0, 0.2))                # a random moment inside the phase
      if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        killed.append(what)
      proc.wait()
    # a restart either was killed or ran to the end; it never fails
    assert proc.returncode in (0, -signal.SIGKILL), (what, err.read_text()[-3000:])
  assert len(killed) >= 3, killed                      # most phases were hit while running
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.load(open(os.path.join(workdir, "results.json")))
  for split in ("valid", "test"):
    assert {k: v for k, v in results[split].items() if k != "decode_s"} == {
        k: v for k, v in full[split].items() if k != "decode_s"}
  assert _final_state_checksum(workdir) == _final_state_checksum(full_dir)


SAVE_ON_FOUR = r"""
import sys, jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxrec.checkpoint import Checkpoints
assert len(jax.devices()) == 4
rep = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P())
tree = jax.device_put({"w": jnp.arange(12.0).reshape(3, 4), "n": jnp.asarray(7, jnp.int32)}, rep)
Checkpoints(sys.argv[1], max_to_keep=1).save(5, tree, {"epoch": 2})
"""


def test_a_checkpoint_saved_on_four_devices_restores_on_one(tmp_path):
  """The best checkpoint of a run on 2 CPU devices (the commands' default) restores in a
  one-device process (a notebook, a script): the saved tree placed by the given sharding,
  where orbax alone refuses the saved topology."""
  flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
  out = subprocess.run([sys.executable, "-c", SAVE_ON_FOUR, str(tmp_path / "ck")], cwd=REPO,
                       env=dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu"),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert len(jax.devices()) < 4
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  ckpt = Checkpoints(str(tmp_path / "ck"), max_to_keep=1)
  assert ckpt.restore(None) is None                  # the saved topology: refused, logged
  step, tree, meta = ckpt.restore(None, sharding=one)
  ckpt.close()
  assert step == 5 and meta == {"epoch": 2}
  chex.assert_trees_all_equal(jax.device_get(tree), {"w": np.arange(12.0).reshape(3, 4),
                                                     "n": np.asarray(7, np.int32)})


@pytest.mark.parametrize("method", ["tiger", "letter", "sasrec", "siit", "simcit", "etegrec"])
def test_scientific_variants_name_their_set_only_in_data_dir_and_name(method):
  """The claims issue's rows rerun on another Amazon set by changing data.dir and data.name
  only: no other value of a `scientific` config names the set or its folder."""
  import importlib
  cfg = importlib.import_module(method).get_config("scientific")
  cfg.data.dir, cfg.data.name = "/elsewhere/beauty", "Beauty"
  found = []

  def walk(node, path):
    if isinstance(node, dict):
      for k, v in node.items():
        walk(v, f"{path}.{k}" if path else k)
    elif isinstance(node, (list, tuple)):
      for v in node:
        walk(v, path)
    elif isinstance(node, str) and path != "variant" and (
        "scientific" in node.lower() or "shared/data" in node):
      found.append(f"{path}={node}")
  walk(json.loads(cfg.to_json_best_effort()), "")
  assert not found, found
