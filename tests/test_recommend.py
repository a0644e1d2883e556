"""From a trained run to recommendations in the data set's keys: `python -m jaxrec.recommend`
answers histories of item keys (unknown items reported, an unknown history gets most-popular,
a malformed line is one error after every earlier line was written), for a method over
semantic IDs and for SASRec, the same items as the library; `jaxrec.evaluate --predictions`
writes each user's ranked items, whose hits are the reported recall."""
import json
import os
import pathlib
import subprocess
import sys

import chex
import numpy as np
import pytest

from jaxrec import pipeline
from jaxrec.training.evaluation import most_popular, recommend, recommend_histories

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(*args):
  env = dict(os.environ, PYTHONPATH=REPO)
  return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env,
                        cwd=REPO)


def test_workdir_records_item_keys_and_histories_answer_as_the_library(trained):
  run, params, _ = pipeline.load_run(trained["tiger"])
  keys = json.load(open(os.path.join(trained["tiger"], "items.json")))
  assert keys == [str(i) for i in range(run.dataset.n_items)]       # synthetic: ids as keys
  users = np.arange(5)
  items, scores, ids = recommend(run, params, users, k=10)
  ds = run.dataset
  seqs = [ds.items_I[ds.offsets_U1[u]:ds.offsets_U1[u + 1]] for u in users]
  again, again_s, _ = recommend_histories(run, params, seqs, users, 10, batch_size=2)
  np.testing.assert_array_equal(again, items)                 # batching changes nothing
  np.testing.assert_allclose(again_s, scores, rtol=1e-5)
  assert np.all(np.diff(scores, axis=1) <= 1e-6)               # best first
  np.testing.assert_array_equal(ids, np.asarray(run.codes)[items])


@pytest.mark.parametrize("name", ["tiger", "sasrec"])
def test_recommend_command_in_keys_with_unknowns_fallback_and_a_bad_line(trained, tmp_path, name):
  workdir = trained[name]
  run, params, _ = pipeline.load_run(workdir)
  ds = run.dataset
  hist = [str(i) for i in ds.items_I[ds.offsets_U1[3]:ds.offsets_U1[4]]]
  lines = [json.dumps({"user": "3", "history": hist}),
           json.dumps({"user": "new", "history": hist[:2] + ["NOPE"]}),
           json.dumps({"history": ["NOPE", "NADA"]}),
           "{not json",
           json.dumps({"user": "never", "history": hist})]
  src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
  src.write_text("\n".join(lines) + "\n")
  res = command("jaxrec.recommend", f"--workdir={workdir}", f"--input={src}", f"--out={out}",
                "--k=5")
  assert res.returncode == 2 and f"error: {src}: line 4: not JSON" in res.stderr, res.stderr
  got = [json.loads(l) for l in out.read_text().splitlines()]
  assert len(got) == 3                                     # the lines before the bad one
  first, second, third = got
  expect, _, _ = recommend(run, params, [3], k=5)
  assert first["items"] == [str(i) for i in expect[0]] and len(first["scores"]) == 5
  assert ("ids" in first) == (name == "tiger")
  assert second["unknown"] == ["NOPE"] and "fallback" not in second
  top = most_popular(run)[0][:5]
  assert third["fallback"] == "most_popular" and third["items"] == [str(i) for i in top]
  assert third["unknown"] == ["NOPE", "NADA"]
  res = command("jaxrec.recommend", f"--workdir={workdir}", f"--input={src}", "--k=5",
                "--exclude_history")
  assert res.returncode == 2
  excluded = json.loads(res.stdout.splitlines()[0])
  assert excluded["items"] and not set(excluded["items"]) & set(hist)


def test_evaluate_predictions_hits_are_the_reported_recall(trained, tmp_path):
  """--predictions' ranks give the reported recalls; --beam 50 ranks 50 items (R@50); --loss
  adds each split's teacher-forced loss, on validation the one train.select='loss' reads
  (SASRec, without one, is refused)."""
  from jaxrec.training.evaluation import split_loss
  out = tmp_path / "pred.jsonl"
  res = command("jaxrec.evaluate", f"--workdir={trained['tiger']}", f"--predictions={out}",
                "--beam=50", "--loss")
  assert res.returncode == 0, res.stderr[-2000:]
  ev = json.load(open(os.path.join(trained["tiger"], "eval.json")))
  assert ev["beam"] == 50 and "recall@100" not in ev["test"]
  run, params, _ = pipeline.load_run(trained["tiger"])
  assert ev["valid"]["loss"] == pytest.approx(split_loss(run, params, "valid"), rel=1e-5)
  assert ev["test"]["loss"] > 0 and ev["test"]["loss"] != ev["valid"]["loss"]
  assert "loss" in res.stdout
  refused = command("jaxrec.evaluate", f"--workdir={trained['sasrec']}", "--loss")
  assert refused.returncode == 2 and "no teacher-forced loss" in refused.stderr
  lines = [json.loads(l) for l in out.read_text().splitlines()]
  for split in ("valid", "test"):
    mine = [l for l in lines if l["split"] == split]
    assert len(mine) == ev[split]["users"]
    for k in (10, 50):
      hits = sum(l["rank"] is not None and l["rank"] <= k for l in mine)
      assert hits / len(mine) == pytest.approx(ev[split][f"recall@{k}"], abs=1e-9)
    assert all(l["rank"] is None or l["items"][l["rank"] - 1] == l["target"] for l in mine)


def test_a_wider_ranking_keeps_sasrecs_top_20(trained):
  """SASRec ranks the whole catalogue: its top 50 (`jaxrec.evaluate --beam 50`) begins with
  its top 20, so every metric up to @20 is unchanged and R@50 / N@50 are added."""
  from jaxrec.methods import get_method
  from jaxrec.training.evaluation import evaluate_split
  run, params, _ = pipeline.load_run(trained["sasrec"])
  default = evaluate_split(run, params, "test")
  wide = evaluate_split(run, params, "test", eval_fn=get_method("sasrec").eval_fn(run, 50))
  assert "recall@50" in wide and "ndcg@50" in wide and "recall@50" not in default
  assert wide["recall@50"] >= wide["recall@20"]
  for k in default:
    if "@" in k:
      assert wide[k] == pytest.approx(default[k], abs=1e-9), k


def test_ranks_file_is_the_runs_metrics_user_by_user(trained):
  """ranks.npz of a finished run (generative and SASRec): each split's ranks give back the
  results.json figures, and the users are those the split evaluates."""
  for name in ("tiger", "sasrec"):
    workdir = pathlib.Path(trained[name])
    results = json.loads((workdir / "results.json").read_text())
    ranks = np.load(workdir / "ranks.npz")
    for split in ("valid", "test"):
      r = ranks[split]
      chex.assert_equal(r.dtype, np.int16)
      seen = r[r >= 0]
      assert len(seen) == results["test"]["users"] > 0   # (leave-one-out: the same users)
      assert seen.max() <= 20
      for k in (5, 10):
        inside = (seen >= 1) & (seen <= k)
        ndcg = np.where(inside, 1.0 / np.log2(np.maximum(seen, 1) + 1), 0.0).mean()
        np.testing.assert_allclose(inside.mean(), results[split][f"recall@{k}"], atol=1e-9)
        np.testing.assert_allclose(ndcg, results[split][f"ndcg@{k}"], rtol=1e-5)
