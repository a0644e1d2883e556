"""bench/quality.py: overrides reach the config with its types; the table shows published rows.
bench/speed.py: an epoch's throughput from per-bucket step times. bench/README.md: every
result file it cites exists (or is cited from git history)."""
import fcntl
import glob
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import chex
import numpy as np
import pytest

from bench import claims, code_nmi, common, quality, reproduce, speed   # (pytest's pythonpath: the root)
from jaxrec.config import get_config


def test_overrides_parse_and_apply():
  cfg = get_config("letter", "tiny")
  quality.apply_overrides(cfg, [quality.parse_override("train.max_steps=7"),
                                quality.parse_override("tokenizer.letter.alpha=0"),
                                quality.parse_override("tokenizer.feature=cf")])
  assert cfg.train.max_steps == 7 and cfg.tokenizer.letter.alpha == 0.0
  assert cfg.tokenizer.feature == "cf"
  with pytest.raises(SystemExit, match="unknown config field"):
    quality.apply_overrides(cfg, [("train.nope", 1)])


def test_table_row_with_published_numbers():
  m = {"recall@5": .05, "recall@10": .07, "ndcg@5": .03, "ndcg@10": .04}
  row = {"run": "letter:instruments", "overrides": ["train.max_steps=300"], "dataset": "Instruments",
         "budget": "max_steps 300", "steps": 300, "device": "cpu x1", "train_seconds": 1.0,
         "valid": m, "test": m, "published": quality.PUBLISHED[("letter", "Instruments")],
         "seed": 0}
  text = quality.table([row])
  assert "0.0909 / 0.1122 / 0.0763 / 0.0831" in text and "train.max_steps=300" in text
  assert len(text.splitlines()) == 3


def test_seeds_aggregate_to_mean_and_std():
  def row(seed, r10):
    m = {"recall@5": r10 / 2, "recall@10": r10, "ndcg@5": r10 / 4, "ndcg@10": r10 / 3}
    return {"run": "sasrec:default", "overrides": [], "dataset": "synthetic", "budget": "b",
            "steps": 10, "device": "cpu x1", "train_seconds": 2.0, "valid": m, "test": m,
            "popularity_test": m, "published": None, "seed": seed}
  agg = quality.aggregate([row(0, .10), row(1, .20), row(2, .30)])
  assert agg["test"]["recall@10"] == pytest.approx(.20)
  assert agg["test_std"]["recall@10"] == pytest.approx(.10)       # sample std of .1, .2, .3
  assert agg["seeds"] == [0, 1, 2] and agg["test_per_seed"]["recall@10"] == [.10, .20, .30]
  text = quality.table([agg])
  assert "0.2000 +- 0.1000" in text and "| 0, 1, 2 |" in text


def test_join_puts_a_runs_seeds_from_several_files_in_one_row(tmp_path):
  """quality.py --join: rows of one run in several result files (seeds run apart) become one
  row with every seed's metrics, seconds and best / stop epochs, in seed order; a seed in two
  files counts once; seed_rows inverts aggregate; the stop epoch of a row without one is
  read from its workdir's last validation record."""
  def row(seed, r10, run="tiger:scientific"):
    m = {"recall@5": r10 / 2, "recall@10": r10, "ndcg@5": r10 / 4, "ndcg@10": r10 / 3}
    return {"run": run, "overrides": [], "dataset": "d", "budget": "b", "steps": 10 * (seed + 1),
            "device": "cpu x2", "train_seconds": 100.0 * (seed + 1), "valid": m, "test": m,
            "popularity_test": m, "published": None, "seed": seed,
            "best": {"epoch": 30 + seed}, "stop_epoch": 40 + seed}
  agg = quality.aggregate([row(0, .1), row(1, .2)])
  back = quality.seed_rows(agg)
  assert [r["test"]["recall@10"] for r in back] == [.1, .2]
  assert [r["train_seconds"] for r in back] == [100.0, 200.0]
  assert [quality.epochs(r) for r in back] == ["30 / 40", "31 / 41"]
  work = tmp_path / "w"
  work.mkdir()
  (work / "metrics.jsonl").write_text('{"split": "valid", "epoch": 12}\n{"step": 5, "epoch": 13}\n'
                                      '{"split": "valid", "epoch": 14}\n')
  old = {**row(2, .3), "workdir": str(work)}
  del old["stop_epoch"]                                   # a file written before stop_epoch
  files = []
  for i, rows in enumerate([[agg, row(0, .1, "sasrec:scientific")], [old, row(1, .2)]]):
    files.append(str(tmp_path / f"q{i}.json"))
    common.write_json(files[-1], {"rows": rows})
  tiger, sasrec = quality.join(files)
  assert tiger["seeds"] == [0, 1, 2] and sasrec["seeds"] == [0]
  assert tiger["test"]["recall@10"] == pytest.approx(.2)
  assert tiger["epochs_per_seed"] == ["30 / 40", "31 / 41", "32 / 14"]
  assert tiger["train_seconds_per_seed"] == [100.0, 200.0, 300.0]
  assert "| 0, 1, 2 | 30 / 40, 31 / 41, 32 / 14 | 100, 200, 300 |" in quality.table([tiger])


def test_first_seed_runs_only_the_later_seeds(tmp_path, monkeypatch):
  """--first_seed K with --seeds N trains seeds K..N-1 alone (a row's earlier seeds run
  elsewhere) and refuses K outside 0..N-1; the table is written after every finished seed."""
  ran = []
  def fake_run(spec, shared, root, name, seed=None):
    ran.append(seed)
    m = {k: .1 * (seed + 1) for k in quality.METRICS}
    return {"run": spec, "workdir": str(tmp_path / f"w{seed}"), "overrides": [], "dataset": "d",
            "budget": "b", "steps": 1,
            "device": "cpu", "train_seconds": 1.0, "valid": m, "test": m, "popularity_test": m,
            "published": None, "seed": seed}
  def fake_run_checked(spec, shared, root, name, seed=None):
    if seed == 2:   # seed 1's row is written before seed 2 starts
      row, = json.loads((tmp_path / "q.json").read_text())["rows"]
      assert row["seeds"] == [1]
    return fake_run(spec, shared, root, name, seed)
  monkeypatch.setattr(quality, "run_one", fake_run_checked)
  monkeypatch.setattr(quality.common, "set_cpu_devices", lambda args: None)
  out = tmp_path / "q"
  monkeypatch.setattr(sys, "argv", ["quality", "tiger:x", "--seeds", "3", "--first_seed", "1",
                                    "--out", str(out)])
  quality.main()
  row, = json.loads((tmp_path / "q.json").read_text())["rows"]
  assert ran == [1, 2] and row["seeds"] == [1, 2]
  assert row["test_per_seed"]["recall@10"] == pytest.approx([.2, .3])
  monkeypatch.setattr(sys, "argv", ["quality", "tiger:x", "--seeds", "1", "--first_seed", "1"])
  with pytest.raises(SystemExit, match="--first_seed 1 needs --seeds N with N > 1"):
    quality.main()


def test_a_table_of_the_same_rows_is_not_rewritten(tmp_path):
  """write_table leaves a result file whose rows differ from the new ones only in the
  invocation's wall time (finished runs read again), and rewrites it on any other change."""
  m = {k: .1 for k in quality.METRICS}
  row = {"run": "tiger:x", "overrides": [], "dataset": "d", "budget": "b", "steps": 1,
         "device": "cpu", "train_seconds": 1.0, "valid": m, "test": m, "popularity_test": m,
         "published": None, "seed": 0, "wall_seconds_this_invocation": 3482.9}
  stem = str(tmp_path / "q")
  quality.write_table(stem, [row])
  first = (tmp_path / "q.json").read_text()
  quality.write_table(stem, [dict(row, wall_seconds_this_invocation=0.0)])
  assert (tmp_path / "q.json").read_text() == first
  quality.write_table(stem, [dict(row, wall_seconds_this_invocation=0.0, train_seconds=2.0)])
  rows = json.loads((tmp_path / "q.json").read_text())["rows"]
  assert rows[0]["train_seconds"] == 2.0 and rows[0]["wall_seconds_this_invocation"] == 0.0
  (tmp_path / "q.json").write_text('{"rows": [{"run": "tig')    # a write cut short
  quality.write_table(stem, [row])
  assert json.loads((tmp_path / "q.json").read_text())["rows"][0]["train_seconds"] == 1.0


def test_a_finished_run_is_read_not_decoded_again(tmp_path, monkeypatch):
  """run_one reads the results.json of a run whose latest checkpoint is its last step, and
  hands any other workdir (no results, or a later checkpoint: resumed) to the pipeline."""
  from jaxrec import pipeline
  m = {k: .1 for k in quality.METRICS}
  done = {"dataset": "d", "steps": 40, "best": {"epoch": 2}, "valid": m, "test": m,
          "popularity": {"test": m}, "train_seconds": 9.0, "device": "cpu x2"}
  calls = []
  def fake_pipeline(cfg, workdir, log=print):
    calls.append(workdir)
    return {**done, "steps": 99}
  monkeypatch.setattr(pipeline, "train_and_evaluate", fake_pipeline)
  workdir = tmp_path / quality.run_tag("tiger:tiny", "n", 0)
  (workdir / "checkpoints" / "train" / "40").mkdir(parents=True)
  (workdir / "checkpoints" / "train" / "20").mkdir()
  (workdir / "results.json").write_text(json.dumps(done))
  from jaxrec.config import config_to_json, get_config
  from jaxrec.errors import ConfigMismatchError
  cfg = get_config("tiger", "tiny")
  cfg.seed = 0
  (workdir / "config.json").write_text(config_to_json(cfg))
  row = quality.run_one("tiger:tiny", [], str(tmp_path), "n", seed=0)
  assert calls == [] and row["steps"] == 40 and row["test"]["recall@10"] == .1
  cfg.train.lr = 0.5                     # the run was made before a setting changed
  (workdir / "config.json").write_text(config_to_json(cfg))
  with pytest.raises(ConfigMismatchError, match="differs in train.lr"):
    quality.run_one("tiger:tiny", [], str(tmp_path), "n", seed=0)
  (workdir / "config.json").unlink()
  (workdir / "checkpoints" / "train" / "60").mkdir()          # trained on after the results
  assert quality.run_one("tiger:tiny", [], str(tmp_path), "n", seed=0)["steps"] == 99
  (workdir / "results.json").unlink()
  quality.run_one("tiger:tiny", [], str(tmp_path), "n", seed=0)
  assert calls == [str(workdir)] * 2


def test_keep_ranks_copies_a_runs_ranks_beside_the_table(tmp_path):
  workdir = tmp_path / "runs" / "tiger-tiny-n-seed0"
  workdir.mkdir(parents=True)
  stem = str(tmp_path / "results" / "quality-n")
  assert quality.keep_ranks({"workdir": str(workdir)}, stem) == ""   # none written: none kept
  np.savez_compressed(workdir / "ranks.npz", valid=np.array([1, 0, -1], np.int16),
                      test=np.array([0, 3, -1], np.int16))
  kept = quality.keep_ranks({"workdir": str(workdir)}, stem)
  assert kept == str(tmp_path / "results" / "ranks" / "tiger-tiny-n-seed0.npz")
  np.testing.assert_array_equal(np.load(kept)["test"], [0, 3, -1])


def test_run_profile_adds_up_a_workdirs_records(tmp_path, monkeypatch):
  """bench/experiments/run_profile.py: the tokenizer fit, compile records, training steps and
  validation decodes of a workdir, the rest of a one-invocation run's wall time, shares; a
  validation sample's standard error from the per-user NDCG@10 and the evaluations within it."""
  from bench.experiments import run_profile
  (tmp_path / "results.json").write_text(json.dumps({
      "method": "tiger", "variant": "s", "dataset": "d", "device": "cpu x2",
      "best": {"epoch": 4}, "train_seconds": 60.0, "wall_seconds_this_invocation": 100.0}))
  (tmp_path / "codes.json").write_text(json.dumps({"stats": {"fit_seconds": 10.0}}))
  records = [{"compile": "train", "seconds": 5.0}, {"compile": "eval", "seconds": 3.0},
             {"step": 1, "loss": 1.0}, {"split": "valid", "decode_s": 6.0, "users": 7},
             {"split": "valid", "decode_s": 4.0, "users": 7}, {"split": "test", "decode_s": 9.0}]
  (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
  row = run_profile.profile(str(tmp_path))
  assert (row["tokenizer_fit_s"], row["compile_s"], row["train_steps_s"],
          row["valid_decodes_s"], row["rest_s"]) == (10.0, 8.0, 60.0, 10.0, 12.0)
  assert row["evaluations"] == 2 and row["valid_users"] == 7 and row["best_epoch"] == 4
  assert row["shares"]["valid_decodes"] == pytest.approx(.1)
  assert "| 2 x 7 |" in run_profile.table([row])
  resumed = json.loads((tmp_path / "results.json").read_text())
  resumed["wall_seconds_this_invocation"] = 50.0            # the last of several invocations
  (tmp_path / "results.json").write_text(json.dumps(resumed))
  row = run_profile.profile(str(tmp_path))
  assert "rest_s" not in row and row["wall_s"] is None
  assert row["shares"]["valid_decodes"] == pytest.approx(10 / 88, abs=1e-4)
  from bench.experiments import gap_by_group
  ranks = [1, 0, 3, 0, 0, 12, 0, 2]     # NDCG@10 1, 0, .5, 0, 0, 0 (rank 12), 0, 1/log2(3)
  monkeypatch.setattr(gap_by_group, "per_user", lambda workdir, split: {
      "users": {u: (0, r, []) for u, r in enumerate(ranks)}})
  with open(tmp_path / "metrics.jsonl", "a") as f:
    for epoch, v in ((2, .10), (4, .30), (6, .29)):
      f.write(json.dumps({"split": "valid", "epoch": epoch, "ndcg@10": v, "decode_s": 1.0}) + "\n")
  ndcg = np.array([1, 0, .5, 0, 0, 0, 0, 1 / np.log2(3)])
  noise = run_profile.sample_noise(str(tmp_path), [4])
  sd = np.std(ndcg, ddof=1)
  assert noise["per_user_sd"] == pytest.approx(sd, abs=1e-4) and noise["evaluations"] == 3
  se = sd / 2 * np.sqrt(.5)
  assert noise["samples"][4]["se"] == pytest.approx(se, abs=1e-4)
  assert noise["samples"][4]["within_one_se"] == [[4, .3], [6, .29]]   # .1: 0.2 behind, se .156


def _claims_queue(tmp_path, results):
  """bench/claims_queue.sh with a `python` that runs bench.queue_rows and, for each row it would
  train, writes "spec|seeds|first seed|the rest" to $CALLS and exits 3: run(lane, **env) -> its
  stdout (tables in `results`, workdirs and their lock files in tmp_path/work)."""
  fake = tmp_path / "bin"
  fake.mkdir()
  (fake / "python").write_text(
      f'#!/bin/bash\n[ "$2" = bench.queue_rows ] && exec {sys.executable} "$@"\n'
      'echo "$3|$5|$7|${*:8}" >> "$CALLS"\nexit 3\n')
  (fake / "python").chmod(0o755)
  script = os.path.join(common.ROOT, "bench", "claims_queue.sh")
  env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls"),
         "RESULTS": str(results), "WORKDIR": str(tmp_path / "work")}
  return lambda lane, **more: subprocess.run(["bash", script, lane], env={**env, **more},
                                             check=True, capture_output=True, text=True).stdout


def test_every_row_of_the_claims_queue_is_a_valid_run(tmp_path):
  """bench/claims_queue.sh (both lanes, run with a `python` that records its arguments): each
  row is a config that validates, and every main row comes with seeds 0, 1 and 2; a row whose
  table already holds its seeds is skipped."""
  from jaxrec.config import validate_config
  results = tmp_path / "results"
  results.mkdir()
  (results / "quality-scientific-paper-letter-s23.json").write_text('{"rows": [{"seeds": [2]}]}')
  run = _claims_queue(tmp_path, results)
  for lane in ("etegrec", "rest"):
    done = run(lane)
    assert "rc=3" in done and "rc=0" not in done   # each row's exit status
  assert "letter:scientific seeds 2..2: in " in done    # its table holds seed 2
  seeds = {}
  for line in (tmp_path / "calls").read_text().splitlines():
    spec, n, first, rest = line.split("|")
    seeds.setdefault(spec, set()).update(range(int(first), int(n)))
    assert f"--name paper --out {results}/quality-scientific-paper-" in rest, rest
  assert seeds["letter:scientific"] == {0, 1}
  seeds["letter:scientific"].add(2)
  for spec in seeds:
    head, *own = quality.split_spec(spec)
    cfg = get_config(*head.split(":"))
    quality.apply_overrides(cfg, [quality.parse_override(o) for o in own])
    validate_config(cfg)
  for _, what, cand, base, _ in claims.claim_pairs("scientific"):   # every claim: 3 seeds
    assert seeds[cand] == seeds[base] == {0, 1, 2}, what
  for _, what, cand, base, _ in claims.ablation_pairs("scientific"):   # bench.claims --ablations
    assert cand in seeds and base in seeds, what
  tags = {quality.run_tag(spec, "paper", seed) for spec in seeds for seed in seeds[spec]}
  for spec in seeds:     # another row's IDs: a workdir of a row the queue runs (written by hand)
    for o in quality.split_spec(spec)[1:]:
      if o.startswith("siit.init_codes="):
        path = o.partition("=")[2].removesuffix("/codes_final.npz")
        assert os.path.basename(path) in tags, spec
  run("etegrec", DATA_DIR="/data/x", DATA_NAME="Toys", CALLS=str(tmp_path / "toys"))
  for line in (tmp_path / "toys").read_text().splitlines():   # only the data flags differ
    assert line.split("|")[3].partition(" --name ")[2].startswith(
        "paper-toys --set data.dir=/data/x --set data.name=Toys --out "
        f"{results}/quality-toys-paper-"), line


def test_claims_queue_starts_only_rows_that_fit_and_are_free(tmp_path):
  """UNTIL: a row whose seeds' time (its tables', else its method and variant's, else its
  method's, times bench.queue_rows' overhead) runs past it is skipped unless its workdir holds
  a checkpoint, a row no table has timed runs; a row whose lock another lane holds is
  skipped. With FILL the rows skipped for time start once no row left fits."""
  from bench import queue_rows
  results, work = tmp_path / "results", tmp_path / "work"
  results.mkdir()
  def table(name, run, seconds):
    (results / f"quality-scientific-paper-{name}.json").write_text(json.dumps(
        {"rows": [{"run": run, "seeds": [2], "train_seconds_per_seed": [seconds]}]}))
  table("letter-s23", "letter:scientific", 2000)     # 2,300 s a seed with the overhead
  table("tiger-s23", "tiger:scientific", 1000)
  table("simcit-sharp-s12", "simcit:scientific,x=1", 5000)   # the method's time for simcit
  tables = str(results / "quality-scientific-paper-*.json")
  assert queue_rows.seed_seconds("letter:scientific", [tables.replace("*", "letter-s23")]) == (
      pytest.approx(2000 * queue_rows.OVERHEAD))
  assert queue_rows.seed_seconds("simcit:scientific", glob.glob(tables)) == pytest.approx(5750)
  assert queue_rows.seed_seconds("siit:scientific", glob.glob(tables)) is None
  assert queue_rows.seed_seconds("tiger:scientific_decoder", glob.glob(tables)) == (
      pytest.approx(1150))
  work.mkdir()
  held = open(work / ".queue-quality-scientific-paper-sasrec-s01.lock", "w")
  fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)   # another lane runs SASRec's seed 0
  # a machine kept LETTER's seed 1 from an earlier session (a checkpoint), not its seed 0
  (work / quality.run_tag("letter:scientific", "paper", 0) / "checkpoints" / "train").mkdir(
      parents=True)
  (work / quality.run_tag("letter:scientific", "paper", 1) / "checkpoints" / "train"
   / "4346").mkdir(parents=True)
  run = _claims_queue(tmp_path, results)
  out = run("rest", UNTIL="+1 hour", SLOWER="2")
  held.close()
  calls = {tuple(line.split("|")[:3]) for line in (tmp_path / "calls").read_text().splitlines()}
  assert ("tiger:scientific", "1", "0") in calls          # 2,300 s of 3,600
  assert ("letter:scientific", "1", "0") not in calls     # 4,600 s
  assert "letter:scientific seeds 0..0: about 4,600 s for seeds [0] (4,600 a seed)" in out
  assert ("letter:scientific", "2", "1") in calls          # 4,600 s, but it resumes
  assert "letter:scientific seeds 1..1: seeds [1] resume from their checkpoints" in out
  assert ("simcit:scientific", "1", "0") not in calls     # 11,500 s, its method's time
  assert ("siit:scientific", "1", "0") in calls           # no time known
  assert ("sasrec:scientific", "1", "0") not in calls
  assert "sasrec:scientific seeds 0..0: another lane runs it, skipped" in out
  assert ("sasrec:scientific", "2", "1") in calls          # its lock is its own
  # FILL: once nothing left fits, the rows that did not fit start, in order
  (tmp_path / "calls").unlink()
  out = run("rest", UNTIL="+1 hour", SLOWER="2", FILL="1")
  first, _, fill = out.partition("FILL: the rows that did not fit")
  assert "letter:scientific seeds 0..0: about 4,600 s" in first and fill
  calls = [tuple(line.split("|")[:3]) for line in (tmp_path / "calls").read_text().splitlines()]
  assert calls.count(("letter:scientific", "1", "0")) == 1    # in the fill pass only
  assert calls.count(("tiger:scientific", "1", "0")) == 2     # it fitted: in both passes


def test_run_specs_split_outside_brackets():
  assert quality.split_spec("simcit:scientific,tokenizer.simcit.views=('text', 'cf'),seed=1") == [
      "simcit:scientific", "tokenizer.simcit.views=('text', 'cf')", "seed=1"]
  assert quality.parse_override("tokenizer.simcit.views=('text',)") == (
      "tokenizer.simcit.views", ("text",))


def test_reproduce_queue_budget_caps_every_schedule():
  """bench/reproduce.py: the queue names each method's paper variant; a budget caps the
  recommender's, the tokenizer's, the derived SASRec's and ETEGRec's fine-tuning epochs
  (never raising them) and the recommender's steps; no budget, no override."""
  for spec in reproduce.QUEUE:
    method, variant = spec.split(":")
    assert variant.endswith("_paper") and get_config(method, variant).variant == variant
  assert reproduce.budget_overrides("tiger", "letter_ids_paper", 0, 0) == []
  got = dict(reproduce.budget_overrides("etegrec", "instruments_paper", 1, 20))
  assert got == {"train.epochs": 1, "cf.train.epochs": 1, "tokenizer.epochs": 1,
                 "tokenizer.save_every": 0, "etegrec.finetune_epochs": 1, "train.max_steps": 20}
  got = dict(reproduce.budget_overrides("tiger", "letter_ids_paper", 500, 0))
  assert got == {"train.epochs": 200, "cf.train.epochs": get_config("tiger", "letter_ids_paper").cf.train.epochs}


def test_code_nmi_known_answers():
  """bench/code_nmi.py's NMI: 1 for a relabelled copy, 0 for independent labelings,
  sqrt(H(a) / H(b)) = sqrt(2 / 3) when b splits each of a's 4 classes into two equal halves."""
  import numpy as np
  a = np.repeat(np.arange(4), 6)
  assert code_nmi.nmi(a, (a * 7 + 3) % 4) == pytest.approx(1.0)
  assert code_nmi.nmi(a, np.tile(np.arange(6), 4)) == pytest.approx(0.0, abs=1e-12)
  halves = a * 2 + np.tile(np.repeat([0, 1], 3), 4)           # 8 classes, two per class of a
  assert code_nmi.nmi(a, halves) == pytest.approx(np.log(4) / np.sqrt(np.log(4) * np.log(8)))


def test_gap_by_group_known_answers():
  """bench/experiments/gap_by_group.py: training popularity leaves each user's last two items
  out; the groups partition the users (0 apart); R@10 / N@10 from ranks; prefix@10 finds the
  target's region at each level; the Markov chain counts training transitions."""
  from bench.experiments import gap_by_group as g
  from jaxrec.data.dataset import Dataset
  ds = Dataset("t", 4, np.array([0, 4, 7]), np.array([0, 1, 2, 3, 1, 1, 2], np.int32))
  np.testing.assert_array_equal(g.train_popularity(ds), [1, 2, 0, 0])
  values = np.array([0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 50])
  groups = g.quartile_groups(values, "p", zero_apart=True)
  assert [label for label, _ in groups][:2] == ["p 0-0", "p 1-3"]
  np.testing.assert_array_equal(sum(m.astype(int) for _, m in groups), np.ones(13))
  recall, ndcg = g.hits(np.array([1, 3, 10, 11, 0]))
  np.testing.assert_allclose(recall, [1, 1, 1, 0, 0])
  np.testing.assert_allclose(ndcg, [1, .5, 1 / np.log2(11), 0, 0])
  codes = np.array([[0, 0, 0], [0, 1, 0], [1, 1, 0], [0, 1, 1]])
  run = {"users": {7: (3, 0, [1, 2, -1]), 8: (2, 0, [0])}}
  np.testing.assert_array_equal(g.prefix_hits(run, [7, 8], codes), [[True, True], [False, False]])
  # the Markov chain: u0's last item 0 was followed by 1 in training; u1's last item 3 never
  # was, so popularity (2: 3, 0 and 1: 2 each, then 3 and 4) ranks its target 4 fifth
  ds = Dataset("m", 5, np.array([0, 5, 9, 13]),
               np.array([0, 1, 2, 0, 1, 1, 2, 3, 4, 2, 0, 3, 3], np.int32))
  chain = g.markov_run(ds, "test")["users"]
  assert chain[0][:2] == (1, 1) and chain[1][:2] == (4, 5) and chain[1][2][:3] == [2, 0, 1]
  # training pairs (0,1), (1,2) | (1,2) | (2,0); test steps: u0 0 -> 1 (seen; 1 repeats),
  # u1 3 -> 4 (neither), u2 3 -> 3 (repeats); a new step seen: u1's 1 -> 2 (target at 6)
  before = [set(ds.items_I[s:e - 1].tolist()) for s, e in zip(ds.offsets_U1, ds.offsets_U1[1:])]
  groups = dict(g.transition_groups(ds, np.array([1, 4, 3]), np.array([0, 3, 3]), before))
  assert list(groups) == ["target repeats", "new, step seen", "new, step unseen"]
  np.testing.assert_array_equal(groups["target repeats"], [True, False, True])
  np.testing.assert_array_equal(groups["new, step unseen"], [False, True, False])
  groups = dict(g.transition_groups(ds, np.array([2]), np.array([1]), [{1}]))
  np.testing.assert_array_equal(groups["new, step seen"], [True])
  targets, history, last, own = g.split_context(ds, np.arange(3), "test")
  np.testing.assert_array_equal(targets, [1, 4, 3])
  np.testing.assert_array_equal(history, [4, 3, 3])
  np.testing.assert_array_equal(last, [0, 3, 3])
  assert own == [{0, 1, 2}, {1, 2, 3}, {0, 2, 3}]
  targets, history, last, own = g.split_context(ds, np.arange(3), "test", dropped=1)
  np.testing.assert_array_equal(targets, [1, 4, 3])         # without the validation item:
  np.testing.assert_array_equal(history, [3, 2, 2])         # the history, its last item and
  np.testing.assert_array_equal(last, [2, 2, 0])            # the items it holds lose it
  assert own == [{0, 1, 2}, {1, 2}, {0, 2}]
  assert g.split_context(ds, np.arange(1), "valid")[0].tolist() == [0]
  short = g.without_valid_item(ds)                   # each user's second-to-last item gone
  np.testing.assert_array_equal(short.offsets_U1, [0, 4, 7, 10])
  np.testing.assert_array_equal(short.items_I, [0, 1, 2, 1, 1, 2, 4, 2, 0, 3])


def test_id_quality_known_answers():
  """bench/experiments/id_quality.py: prefix groups, the share of pairs in one group against
  independent draws from the same marginals, nearest neighbours by cosine (never the item
  itself), and the pairs: training transitions leave each user's last two items and repeats
  out, the test step drops a repeated target."""
  from bench.experiments import id_quality as q
  from jaxrec.data.dataset import Dataset
  codes = np.array([[0, 0, 0], [0, 1, 0], [1, 1, 0], [0, 1, 1]])
  np.testing.assert_array_equal(q.prefix_groups(codes, 1), [0, 0, 1, 0])
  np.testing.assert_array_equal(q.prefix_groups(codes, 2), [0, 1, 2, 1])
  # level 2's codes 0, 1, 1, 1: perplexity exp(H(1/4, 3/4)) = 1.75; the prefixes' largest group 2
  assert q.level_stats(codes, 2, q.prefix_groups(codes, 2)) == {"used": 2, "perplexity": 1.8,
                                                                "largest_group": 2}
  groups = np.array([0, 0, 1, 1])
  # pairs (0,1) same, (0,2) not, (2,3) same, (1,3) not: share .5; first items 0,0,2,1 are
  # 3/4 in group 0, second items 1,2,3,3 are 1/4: chance 3/4*1/4 + 1/4*3/4 = .375
  got = q.pair_share(groups, np.array([0, 0, 2, 1]), np.array([1, 2, 3, 3]))
  assert got == {"share": 0.5, "chance": 0.375, "lift": 1.33}
  x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 2.0]])
  np.testing.assert_array_equal(q.nearest(x, block=3), [1, 0, 3, 2])
  ds = Dataset("t", 5, np.array([0, 6, 10]), np.array([0, 1, 1, 2, 3, 4, 2, 0, 3, 3], np.int32),
               features={"text": x[[0, 1, 2, 3, 3]], "cf": x[[0, 1, 2, 3, 3]]})
  kinds = q.pairs(ds)
  np.testing.assert_array_equal(np.stack(kinds["transitions"]), [[0, 1, 2], [1, 2, 0]])
  np.testing.assert_array_equal(np.stack(kinds["test step"]), [[3], [4]])


def test_id_quality_reads_a_tokenizer_workdir_without_config(tmp_path):
  """A `jaxrec.tokenize` workdir has codes and codes.json, no config.json: its semantic
  levels are counted from codes.json (the appended collision level left out); a folder with
  neither is refused by name, and so is a call with no run to read the data from."""
  from bench.experiments import id_quality as q
  from jaxrec.tokenizer.codes import CodeTable
  codes = np.array([[0, 1, 2, 0], [0, 1, 2, 1], [3, 0, 1, 0]], np.int32)
  CodeTable(codes, (4, 4, 4, 2), {"before_resolution": {"used": [2, 2, 2]}}, "fp").save(
      str(tmp_path))
  np.testing.assert_array_equal(q.semantic_codes(str(tmp_path), None), codes[:, :3])
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(SystemExit, match="empty: neither a run"):
    q.main([str(empty)])
  with pytest.raises(SystemExit):
    q.main([str(tmp_path)])


def test_epoch_totals_price_every_planned_batch_at_its_bucket():
  import numpy as np
  from jaxrec.data.pipeline import Split, plan_batches
  # 5 samples of history 1, 3 of history 4, batches of 2: buckets 2 and 4, the last batch
  # of each bucket padded with a -1 row
  lens = np.array([1, 1, 1, 1, 1, 4, 4, 4], np.int32)
  split = Split("train", np.zeros(8, np.int32), np.zeros(8, np.int64), lens.astype(np.int64))
  plan = plan_batches(split, 2, (2, 4), True, 0, 0)
  assert sorted(b for b, _ in plan) == [2, 2, 2, 4, 4]
  real, seconds, flops = speed.epoch_totals(plan, {2: 0.5, 4: 2.0}, {2: 10.0, 4: 30.0})
  assert (real, seconds, flops) == (8.0, 3 * 0.5 + 2 * 2.0, 3 * 10.0 + 2 * 30.0)


# `bench/results/...` in backquotes or plain text; `git show <commit>:bench/results/...` apart.
_CITED = re.compile(r"(git show ([0-9a-f]{7,40}):)?"
                    r"(bench/results/(?:\{[^{}\s`]*\}|[^\s`'\"()\[\],;{}])*)")


def _expand_braces(path):
  m = re.search(r"\{([^{}]*)\}", path)
  if not m:
    return [path]
  return [q for alt in m.group(1).split(",")
          for q in _expand_braces(path[:m.start()] + alt + path[m.end():])]


def cited_results(text):
  """(commit or None, path) of every bench/results path a text names (trailing '.' of a
  sentence dropped; templates such as `<platform>` skipped)."""
  out = []
  for m in _CITED.finditer(text):
    path = m.group(3).rstrip(".:")
    if path.rstrip("/") != "bench/results" and "<" not in path:
      out.append((m.group(2), path))
  return out


def missing_results(text, root=common.ROOT):
  """Cited working-tree paths with no file: a path may be a glob, `{a,b}` alternatives, or a
  `quality.py --out` stem (its .md and .json)."""
  missing = []
  for commit, path in cited_results(text):
    if commit:
      continue
    for p in _expand_braces(path):
      if not any(glob.glob(os.path.join(root, q)) for q in (p, p + ".md", p + ".json")):
        missing.append(p)
  return missing


def test_bench_readme_cites_only_existing_results():
  with open(os.path.join(common.ROOT, "bench", "README.md")) as f:
    text = f.read()
  cited = cited_results(text)
  assert len(cited) > 20
  assert missing_results(text) == []
  assert missing_results("`bench/results/nope-{a,b}.json`") == ["bench/results/nope-a.json",
                                                                 "bench/results/nope-b.json"]
  # Files cited from git history: each in its commit, where the history is there to ask.
  for commit, path in cited:
    if commit is None or shutil.which("git") is None:
      continue
    have = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=common.ROOT,
                          capture_output=True)
    if have.returncode:   # not a git checkout, or a shallow one without that commit
      continue
    found = subprocess.run(["git", "cat-file", "-e", f"{commit}:{path}"], cwd=common.ROOT,
                           capture_output=True)
    assert found.returncode == 0, f"git show {commit}:{path}"


def test_claims_by_group_from_kept_ranks(tmp_path):
  """--groups on the tiny data set: a candidate that finds exactly the targets of one
  transition group (rank 1) against a baseline that finds none gains 1 there and 0 in the
  others, the share of that group over all users; two seeds, the SE over them (0 here, the
  same ranks); a third seed of the candidate alone is left out; rank files of another data
  set are refused."""
  from bench.experiments import gap_by_group as g
  cand, base = "tiger:tiny,train.lr=0.1", "tiger:tiny"
  ds = claims.spec_dataset(base, {})
  ranks = np.full(ds.n_users, -1, np.int16)
  users = np.flatnonzero(ds.lengths_U >= 3)
  targets, _, last, own = g.split_context(ds, users, "test")
  groups = dict(g.transition_groups(ds, targets, last, own))
  label = max(groups, key=lambda k: groups[k].sum())      # (the largest group: not empty)
  hit = ranks.copy()
  hit[users] = np.where(groups[label], 1, 0)
  miss = ranks.copy()
  miss[users] = 0
  for seed in (0, 1):
    np.savez_compressed(claims.rank_path(str(tmp_path), cand, "paper", seed), test=hit, valid=hit)
    np.savez_compressed(claims.rank_path(str(tmp_path), base, "paper", seed), test=miss, valid=miss)
  np.savez_compressed(claims.rank_path(str(tmp_path), cand, "paper", 2), test=hit, valid=hit)
  rows = claims.by_group([("P", "c", cand, base, None)], str(tmp_path), "paper")
  got = {r["group"]: r for r in rows}
  assert set(got) == {"all", *groups}
  for r in rows:
    assert r["seeds"] == [0, 1] and r["se_over"] == "seeds" and r["se"] == [0.0, 0.0]
    want = {"all": groups[label].mean(), label: 1.0}.get(r["group"], 0.0)
    np.testing.assert_allclose(r["diff"], [want, want], rtol=1e-9)     # N@10 of rank 1: 1
  assert got["all"]["users"] == len(users) == sum(got[k]["users"] for k in groups)
  assert "| P | c | all |" in claims.group_table(rows)
  free = claims.rank_path(str(tmp_path), "etegrec:tiny", "paper", 0)   # a run decoding free
  np.savez_compressed(free, test=miss, test_constrained=hit, valid=miss)
  np.testing.assert_array_equal(claims.split_ranks(free, "test"), hit)     # as the claims read
  np.testing.assert_array_equal(claims.split_ranks(free, "valid"), miss)
  lost = claims.rank_path(str(tmp_path), base, "paper", 1)    # its workdir lost, no ranks kept:
  os.remove(lost)                                              # its group means from a gap table
  table = {"split": "test", "workdirs": [f"/w/{quality.run_tag(base, 'paper', 1)}"], "groups": [
      {"group": k, "users": got[k]["users"],
       "runs": {quality.run_tag(base, "paper", 1): {"recall": 0.0, "ndcg": 0.0}}} for k in got]}
  (tmp_path / "gap.json").write_text(json.dumps(table))
  means = claims.gap_tables([str(tmp_path / "gap.json")], "test")
  assert claims.gap_tables([str(tmp_path / "gap.json")], "valid") == {}
  again = claims.by_group([("P", "c", cand, base, None)], str(tmp_path), "paper", tables=means)
  assert [r["diff"] for r in again] == [r["diff"] for r in rows]
  assert [r["per_seed"][1]["user_se"] for r in again] == [None] * len(rows)   # not paired
  for bad, match in ((miss[:-1], f"{ds.n_users - 1} users, its row's data set {ds.n_users}"),
                     (np.where(np.arange(len(miss)) == users[0], -1, miss), "users differ")):
    np.savez_compressed(lost, test=bad, valid=bad)
    with pytest.raises(SystemExit, match=match):
      claims.by_group([("P", "c", cand, base, None)], str(tmp_path), "paper")


def test_claims_pair_seeds_and_give_the_standard_error(tmp_path):
  """Paired differences over the seeds both rows finished (an unfinished seed is skipped),
  with the standard error of the mean difference and the 2-SE verdict; the same from
  quality.py's result files."""
  def write(spec, seed, r10, n10=0.05):
    d = tmp_path / quality.run_tag(spec, "paper", seed)
    d.mkdir()
    test = {"recall@5": r10 / 2, "recall@10": r10, "ndcg@5": n10 / 2, "ndcg@10": n10}
    (d / "results.json").write_text(json.dumps({"test": test}))
  for seed, (c, b) in enumerate([(.11, .10), (.12, .10), (.13, .10)]):
    write("letter:sci", seed, c)
    write("tiger:sci,tokenizer.source=rqkmeans", seed, b)
  (tmp_path / quality.run_tag("letter:sci", "paper", 3)).mkdir()      # unfinished: skipped
  results = lambda spec: claims.seed_results(str(tmp_path), spec, "paper")
  row, = claims.compare(results, [("LETTER", "c", "letter:sci",
                                   "tiger:sci,tokenizer.source=rqkmeans", .06)])
  r10 = row["metrics"]["recall@10"]
  assert row["seeds"] == [0, 1, 2]
  np.testing.assert_allclose([r10["diff"], r10["se"], r10["relative"]],
                             [.02, .01 / np.sqrt(3), .2], rtol=1e-9)
  assert r10["verdict"] == "holds" and row["metrics"]["ndcg@10"]["verdict"] == "not resolved"
  one, = claims.compare(lambda spec: {s: v for s, v in results(spec).items() if s == 0},
                        [("", "control", "letter:sci", "tiger:sci,tokenizer.source=rqkmeans", None)])
  assert one["metrics"]["recall@10"]["verdict"] == "one seed"
  behind = claims.paired({0: {"test": {"recall@10": .1}}, 1: {"test": {"recall@10": .09}}},
                         {0: {"test": {"recall@10": .2}}, 1: {"test": {"recall@10": .2}}},
                         metrics=("recall@10",))
  assert behind["metrics"]["recall@10"]["verdict"] == "fails"
  free = {0: {"test": {"recall@10": .0}, "test_constrained": {"recall@10": .3}}}   # ETEGRec's
  assert claims.paired(free, {0: {"test": {"recall@10": .2}}},
                       metrics=("recall@10",))["metrics"]["recall@10"]["diff"] == pytest.approx(.1)
  assert "| ahead / not resolved |" in claims.table([{**row, "paper": ""}])
  pairs = {(c, b) for _, _, c, b, _ in claims.ablation_pairs("scientific")}
  assert ("siit:scientific,siit.align_loss=sum", "siit:scientific") in pairs
  assert ("siit:scientific,tokenizer.source=random", "tiger:scientific,tokenizer.source=random") in pairs
  table = tmp_path / "quality.json"
  table.write_text(json.dumps({"rows": [{"run": "letter:sci", "seeds": [0, 1, 2], "test": {},
                                         "test_per_seed": {k: [.11, .12, .13] for k in quality.METRICS}}]}))
  later = tmp_path / "quality-seed3.json"   # the same row's seed 3, run apart (--first_seed)
  later.write_text(json.dumps({"rows": [{"run": "letter:sci", "seeds": [3], "test": {},
                                         "test_per_seed": {k: [.14] for k in quality.METRICS}}]}))
  joined = quality.per_seed_rows([str(table), str(later)])["letter:sci"]
  assert sorted(joined) == [0, 1, 2, 3]
  assert joined[2]["test"]["ndcg@10"] == .13 and joined[3]["test"]["ndcg@10"] == .14


def test_a_free_decoding_rows_constrained_metrics_are_aggregated_and_shown(tmp_path):
  m = {"recall@5": .05, "recall@10": .07, "ndcg@5": .03, "ndcg@10": .04}
  rows = [{"run": "etegrec:s", "overrides": [], "dataset": "S", "budget": "b", "steps": 1,
           "device": "cpu", "train_seconds": 1.0, "valid": m, "test": m, "popularity_test": m,
           "published": None, "seed": s,
           "test_constrained": {k: v * (2 + s) for k, v in m.items()}} for s in (0, 1)]
  row = quality.aggregate(rows)
  assert row["test_constrained"]["recall@10"] == pytest.approx(.07 * 2.5)
  assert row["test_constrained_per_seed"]["ndcg@10"] == pytest.approx([.08, .12])
  assert "(decoded free; constrained: test R@10 / N@10 0.1750 +- 0.0495" in quality.table([row])
  common.write_json(str(tmp_path / "q.json"), {"rows": [row]})   # bench.claims --tables reads it so
  got = quality.per_seed_rows([str(tmp_path / "q.json")])["etegrec:s"]
  assert claims.constrained_test(got[1])["ndcg@10"] == pytest.approx(.12)


def test_last_checkpoint_copy_reads_the_newest_train_checkpoint(trained, tmp_path):
  """bench/experiments/last_checkpoint.py: the copy's best holds the newest train/
  checkpoint's recommender (its params equal that train state's, not the best's), and the
  source is unchanged."""
  import jax
  from bench.experiments.last_checkpoint import last_checkpoint_copy
  from jaxrec import pipeline
  src = str(tmp_path / "src")                   # the tiny run with its newest train/ step gone,
  shutil.copytree(trained["tiger"], src)        # so that the newest left is not the best
  train_dir = os.path.join(src, "checkpoints", "train")
  steps = sorted(int(n) for n in os.listdir(train_dir) if n.isdigit())
  best_dir = os.path.join(src, "checkpoints", "best")
  assert len(steps) == 2 and os.listdir(best_dir) == [str(steps[-1])]
  shutil.rmtree(os.path.join(train_dir, str(steps[-1])))
  _, best_params, _ = pipeline.load_run(src)
  dst = str(tmp_path / "last")
  assert last_checkpoint_copy(src, dst, log=lambda m: None) == steps[0]
  assert os.listdir(best_dir) == [str(steps[-1])]
  run, params, best_step = pipeline.load_run(dst)
  assert best_step == steps[0]
  loop = pipeline.resumed_loop(run, log=lambda m: None)
  chex.assert_trees_all_close(jax.device_get(params),
                              jax.device_get(loop.plan.rec_params(loop.state)))
  with pytest.raises(AssertionError):
    chex.assert_trees_all_close(jax.device_get(params), jax.device_get(best_params))
  with pytest.raises(SystemExit, match="exists"):
    last_checkpoint_copy(src, dst, log=lambda m: None)


def test_more_patience_copy_goes_on_as_a_run_with_that_patience(tmp_path, monkeypatch):
  """bench/experiments/more_patience.py: a run stopped by patience 1, copied with patience 2
  and resumed, ends as a run with patience 2 from the start (the same evaluations, the same
  final train state); the source is unchanged; a run whose epochs ran out, or one that the
  new patience would stop at the same evaluation, is refused and no copy is left."""
  from bench.experiments.more_patience import more_patience_copy
  from jaxrec import pipeline
  from jaxrec.training.evaluation import Selection
  from test_train import _final_state_checksum, tiny_config
  # the first evaluation stays the best, so patience alone decides where a run stops
  monkeypatch.setattr(Selection, "better", lambda self, valid, best: best is None)
  quiet = lambda m: None
  cfg = lambda patience: tiny_config(epochs=3, eval_every=1, patience=patience)
  valid_epochs = lambda d: [json.loads(l)["epoch"] for l in open(os.path.join(d, "metrics.jsonl"))
                            if json.loads(l).get("split") == "valid"]
  src, dst, full = (str(tmp_path / n) for n in ("p1", "p2", "full"))
  stopped = pipeline.train_and_evaluate(cfg(1), src, log=quiet)
  assert valid_epochs(src) == [1, 2]                             # stopped before its 3 epochs
  where = more_patience_copy(src, dst, 2, log=quiet)
  assert where["epoch"] == 2 and where["bad_evals"] == 1
  assert not os.path.exists(os.path.join(dst, "results.json"))
  with open(os.path.join(src, "results.json")) as f:
    assert json.load(f)["steps"] == stopped["steps"]             # the source untouched
  logs = []
  went_on = pipeline.train_and_evaluate(cfg(2), dst, log=logs.append)
  assert any("reopened" in m for m in logs), logs
  uninterrupted = pipeline.train_and_evaluate(cfg(2), full, log=quiet)
  assert valid_epochs(dst) == valid_epochs(full) == [1, 2, 3]
  assert went_on["steps"] == uninterrupted["steps"] > stopped["steps"]
  assert _final_state_checksum(dst) == _final_state_checksum(full)
  for source, patience in ((full, 5), (src, 1)):                 # epochs out; the same stop
    with pytest.raises(SystemExit, match="does not reopen"):
      more_patience_copy(source, str(tmp_path / "refused"), patience, log=quiet)
    assert not os.path.exists(tmp_path / "refused")


def test_gap_by_group_other_user_reads_the_next_users_token(trained):
  """bench/experiments/gap_by_group.py --other-user: every user keeps its own history and
  target (the rows are mapped back), only the user token changes: the tiny TIGER (16 hashed
  user buckets) ranks differently for some users, and identically when it reads its own."""
  from bench.experiments import gap_by_group as g
  own = g.per_user(trained["tiger"], "valid")["users"]
  other = g.per_user(trained["tiger"], "valid", other_user=True)["users"]
  assert sorted(own) == sorted(other)
  assert all(own[u][0] == other[u][0] for u in own)
  assert any(own[u][2] != other[u][2] for u in own)
  assert g.per_user(trained["tiger"], "valid")["users"] == own


def test_gap_by_group_table_reproduces_the_runs_figures(trained, tmp_path):
  """gap_by_group's whole table on the tiny TIGER: the 'all' row is the run's reported valid
  R@10 / N@10, the three transition groups partition the users and their R@10 average back
  to it, and the list shares are shares."""
  from bench.experiments import gap_by_group as g
  out = tmp_path / "gap.json"
  g.main([trained["tiger"], "--split", "valid", "--out", str(out)])
  table = {row["group"]: row for row in json.loads(out.read_text())["groups"]}
  name = os.path.basename(os.path.normpath(trained["tiger"]))
  reported = json.loads((pathlib.Path(trained["tiger"]) / "results.json").read_text())["valid"]
  whole = table["all"]["runs"][name]
  assert whole["recall"] == pytest.approx(reported["recall@10"], abs=1e-9)
  assert whole["ndcg"] == pytest.approx(reported["ndcg@10"], rel=1e-6)   # (float32 sums)
  parts = [table[k] for k in ("target repeats", "new, step seen", "new, step unseen")]
  assert sum(p["users"] for p in parts) == table["all"]["users"]
  assert sum(p["users"] * p["runs"][name]["recall"] for p in parts) == pytest.approx(
      table["all"]["users"] * whole["recall"])
  assert all(0 <= row["runs"][name][k] <= 1 for row in table.values()
             for k in ("top_own", "top_last", "top_unseen"))
