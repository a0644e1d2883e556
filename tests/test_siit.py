"""SIIT (reconstruction): the greedy assignment on adversarial candidates, churn 0 when the
model's decoding returns the current IDs, refinement off == TIGER bit for bit, and resume
across a refinement round."""
import json
import os

import numpy as np
import pytest

import siit as siit_config
import tiger
from jaxrec import trainer
from jaxrec.methods import siit

SIZES = (4, 4, 8)


def test_greedy_assignment_is_collision_free_within_capacity_when_all_prefer_one_id():
  n, w = 40, 3
  cand = np.zeros((n, w, 3), np.int32)                 # every item's every candidate: (0, 0, 0)
  cand[:, 1] = (0, 0, 1)
  score = np.tile(np.array([0.0, -1.0, -2.0]), (n, 1))
  current = np.stack([np.arange(n) % 4, (np.arange(n) // 4) % 4, np.arange(n) // 16], 1)
  codes, collisions = siit.greedy_assign(cand, score, current.astype(np.int32), SIZES,
                                         capacity=12)
  assert collisions == n - 1                           # all best candidates are the same ID
  assert len({tuple(c) for c in codes}) == n           # no two items share an ID
  for level, size in enumerate(SIZES):
    assert np.bincount(codes[:, level], minlength=size).max() <= 12
  assert (codes < np.asarray(SIZES)).all() and (codes >= 0).all()


def test_refinement_keeps_ids_when_the_model_returns_them():
  rng = np.random.default_rng(0)
  current = np.unique(rng.integers(0, 4, (60, 3)) * [1, 1, 2], axis=0).astype(np.int32)
  n = len(current)
  others = rng.integers(0, 4, (n, 2, 3))
  cand = np.concatenate([current[:, None], others], axis=1)
  score = np.concatenate([np.zeros((n, 1)), -5 - rng.random((n, 2))], axis=1)
  codes, _ = siit.greedy_assign(cand, score, current, SIZES, usage_penalty=0.5)
  np.testing.assert_array_equal(codes, current)        # churn 0


def _checksum(workdir):
  from jaxrec.checkpoint import Checkpoints
  import orbax.checkpoint as ocp
  c = Checkpoints(os.path.join(workdir, "checkpoints", "best"))
  raw = c._mgr.restore(c.steps()[-1], args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return raw["state"]["params"]


def test_refinement_off_equals_tiger_bit_for_bit(tmp_path):
  import jax
  base = trainer.train_and_evaluate(tiger.get_config("tiny"), str(tmp_path / "tiger"),
                                    log=lambda m: None)
  cfg = siit_config.get_config("tiny")
  cfg.siit.rounds, cfg.siit.align_ratio = 0, 0.0
  off = trainer.train_and_evaluate(cfg, str(tmp_path / "siit"), log=lambda m: None)
  for split in ("valid", "test"):
    assert {k: v for k, v in off[split].items() if k != "decode_s"} == \
        {k: v for k, v in base[split].items() if k != "decode_s"}
  jax.tree.map(np.testing.assert_array_equal, _checksum(str(tmp_path / "siit")),
               _checksum(str(tmp_path / "tiger")))


def test_resume_across_a_refinement_round_is_exact(tmp_path, monkeypatch):
  cfg = siit_config.get_config("tiny")
  full = trainer.train_and_evaluate(cfg, str(tmp_path / "full"), log=lambda m: None)
  workdir = str(tmp_path / "resumed")
  real = trainer._check_and_log

  def crash(pending, *a, **k):
    if pending[0] == 15:      # inside epoch 1, before its refinement; resumes from step 10
      raise KeyboardInterrupt("simulated kill")
    return real(pending, *a, **k)

  monkeypatch.setattr(trainer, "_check_and_log", crash)
  with pytest.raises(KeyboardInterrupt):
    trainer.train_and_evaluate(cfg, workdir, log=lambda m: None)
  monkeypatch.setattr(trainer, "_check_and_log", real)
  resumed = trainer.train_and_evaluate(cfg, workdir, log=lambda m: None)
  for split in ("valid", "test"):
    assert resumed[split] == {**full[split], "decode_s": resumed[split]["decode_s"]}
  rounds = lambda d: [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl")) if '"round"' in l]
  assert rounds(workdir) == rounds(str(tmp_path / "full")) and len(rounds(workdir)) == 1
  np.testing.assert_array_equal(np.load(os.path.join(workdir, "codes_final.npz"))["codes"],
                                np.load(os.path.join(str(tmp_path / "full"), "codes_final.npz"))["codes"])
