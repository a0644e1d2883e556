"""SIIT (reconstruction): the greedy assignment on adversarial candidates, churn 0 when the
model's decoding returns the current IDs, refinement off == TIGER bit for bit, and resume
across a refinement round."""
import json
import os

import numpy as np
import pytest

import siit as siit_config
import tiger
from jaxrec import pipeline
from jaxrec.training import loop
from jaxrec.errors import ConfigError
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



def test_keep_margin_moves_only_confident_items_and_never_onto_another_items_id():
  current = np.array([[0, 0, 0], [0, 0, 1], [1, 0, 0], [2, 0, 0]], np.int32)
  # item 0's best candidate is item 1's ID, far above its own; item 1 prefers a free ID
  # but only slightly; item 2 prefers a free ID by a wide margin; item 3 returns its own.
  cand = np.array([[[0, 0, 1], [3, 3, 3]],
                   [[1, 1, 1], [0, 0, 1]],
                   [[2, 2, 2], [1, 0, 0]],
                   [[2, 0, 0], [3, 0, 0]]], np.int32)
  score = np.array([[-0.1, -0.2], [-1.0, -1.2], [-0.5, -4.0], [-0.3, -3.0]])
  current_score = np.array([-6.0, -1.2, -4.0, -0.3])
  codes, _ = siit.greedy_assign(cand, score, current, SIZES, current_score_N=current_score,
                                keep_margin=1.0)
  np.testing.assert_array_equal(codes, [[3, 3, 3],      # moves, but not onto item 1's ID
                                        [0, 0, 1],      # gain 0.2 <= 1: keeps
                                        [2, 2, 2],      # gain 3.5: moves
                                        [2, 0, 0]])     # its own ID: keeps
  # without the margin, item 0 keeps nothing reserved: item 1 moves off, item 0 takes its ID
  free, _ = siit.greedy_assign(cand, score, current, SIZES)
  np.testing.assert_array_equal(free[0], [0, 0, 1])


def test_a_mover_never_lands_on_an_id_no_better_than_its_own():
  """Items 0 and 1 both beat their IDs by a wide margin with the same best candidate; item 0
  scores it higher and takes it. Item 1's next candidate scores below its own ID: it keeps
  its ID ('better'), or moves down to it ('any', the rule before 2026-12-06)."""
  current = np.array([[0, 0, 0], [1, 0, 0]], np.int32)
  cand = np.array([[[2, 2, 2], [3, 3, 3]],
                   [[2, 2, 2], [3, 2, 1]]], np.int32)
  score = np.array([[-0.1, -0.2], [-0.2, -8.0]])
  current_score = np.array([-6.0, -5.0])
  kw = dict(current_score_N=current_score, keep_margin=1.0)
  codes, _ = siit.greedy_assign(cand, score, current, SIZES, **kw)
  np.testing.assert_array_equal(codes, [[2, 2, 2], [1, 0, 0]])
  np.testing.assert_array_equal(siit.new_id_score(cand, score, codes), [-0.1, -np.inf])
  down, _ = siit.greedy_assign(cand, score, current, SIZES, movers="any", **kw)
  np.testing.assert_array_equal(down, [[2, 2, 2], [3, 2, 1]])
  assert siit.new_id_score(cand, score, down)[1] == -8.0   # 3 nats below its own ID
  score[1, 1] = -3.0                                         # 2 nats above its own: it moves
  np.testing.assert_array_equal(siit.greedy_assign(cand, score, current, SIZES, **kw)[0][1],
                                [3, 2, 1])

def _checksum(workdir):
  from jaxrec.checkpoint import Checkpoints
  import orbax.checkpoint as ocp
  c = Checkpoints(os.path.join(workdir, "checkpoints", "best"))
  raw = c._mgr.restore(c.steps()[-1], args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return raw["state"]["params"]


def test_refinement_rounds_start_at_first_refine():
  at = lambda first, every, rounds: [d for d in range(1, 40)
                                     if siit.refine_round(d, first=first, every=every, rounds=rounds)]
  assert at(0, 8, 3) == [8, 16, 24]
  assert at(20, 8, 3) == [20, 28, 36]
  assert at(30, 8, 1) == [30]
  assert at(0, 8, 0) == []
  assert siit.refine_round(28, first=20, every=8, rounds=3) == 2


def test_mixed_alignment_loss_is_the_per_sample_mean_over_both_tasks(tmp_path):
  """align_loss='mixed': (W * R + n * A) / (W + n), W the batch's real R samples and n the A
  items (one batch of a mixed multi-task data set); 'sum': R + A. The same keys give the
  same R and A in both."""
  import jax
  import jax.numpy as jnp
  import optax
  from jaxrec.data import BatchIterator
  from jaxrec.optim import TrainState
  cfg = siit_config.get_config("tiny")
  assert cfg.siit.align_loss == "mixed"
  run = pipeline.setup(cfg, str(tmp_path), log=lambda m: None)
  it = BatchIterator(run.dataset, run.splits["train"], cfg.train.batch_size, run.buckets,
                     shuffle=True, seed=0)
  batch = next(iter(it.epoch_batches()))
  plan = siit.training_plan(run, jax.random.key(0), len(it))
  params = plan.state.params
  tx = optax.sgd(0.0)
  state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  feats = jnp.asarray(run.dataset.features[cfg.siit.feature], jnp.float32)
  soft = siit.SoftTokens(int(cfg.siit.soft_tokens), run.model.cfg.d_model)
  n = 8
  out = {mixed: siit.train_step(state, batch, run.codes, jax.random.key(3), feats, rec=run.steps,
                                model=run.model, soft=soft, tx=tx, tau=1.0, n_align=n,
                                mixed=mixed)[1] for mixed in (True, False)}
  a = float(out[True]["align"])
  assert a == pytest.approx(float(out[False]["align"]), rel=1e-6)
  r = float(out[False]["loss"]) - a
  w = float(np.sum(batch["weight_B"]))
  assert 0 < w <= cfg.train.batch_size
  assert float(out[True]["loss"]) == pytest.approx((w * r + n * a) / (w + n), rel=1e-5)
  cfg.tokenizer.shared_ids = True          # a round would leave shared IDs shared: refused
  with pytest.raises(ConfigError, match="shared_ids"):
    siit.training_plan(run, jax.random.key(0), len(it))


def test_refinement_off_equals_tiger_bit_for_bit(tmp_path):
  import jax
  base = pipeline.train_and_evaluate(tiger.get_config("tiny"), str(tmp_path / "tiger"),
                                    log=lambda m: None)
  cfg = siit_config.get_config("tiny")
  cfg.siit.rounds, cfg.siit.align_ratio = 0, 0.0
  off = pipeline.train_and_evaluate(cfg, str(tmp_path / "siit"), log=lambda m: None)
  for split in ("valid", "test"):
    assert {k: v for k, v in off[split].items() if k != "decode_s"} == \
        {k: v for k, v in base[split].items() if k != "decode_s"}
  jax.tree.map(np.testing.assert_array_equal, _checksum(str(tmp_path / "siit")),
               _checksum(str(tmp_path / "tiger")))


def test_resume_across_a_refinement_round_is_exact(tmp_path, monkeypatch):
  cfg = siit_config.get_config("tiny")
  full = pipeline.train_and_evaluate(cfg, str(tmp_path / "full"), log=lambda m: None)
  workdir = str(tmp_path / "resumed")
  real = loop.check_and_log

  def crash(pending, *a, **k):
    if pending[0] == 15:      # inside epoch 1, before its refinement; resumes from step 10
      raise KeyboardInterrupt("simulated kill")
    return real(pending, *a, **k)

  monkeypatch.setattr(loop, "check_and_log", crash)
  with pytest.raises(KeyboardInterrupt):
    pipeline.train_and_evaluate(cfg, workdir, log=lambda m: None)
  monkeypatch.setattr(loop, "check_and_log", real)
  resumed = pipeline.train_and_evaluate(cfg, workdir, log=lambda m: None)
  for split in ("valid", "test"):
    assert resumed[split] == {**full[split], "decode_s": resumed[split]["decode_s"]}
  rounds = lambda d: [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl")) if '"round"' in l]
  assert rounds(workdir) == rounds(str(tmp_path / "full")) and len(rounds(workdir)) == 1
  assert 0.0 <= rounds(workdir)[0]["align_top1"] <= 1.0
  assert rounds(workdir)[0]["moved_not_better"] == 0.0      # movers='better'
  np.testing.assert_array_equal(np.load(os.path.join(workdir, "codes_final.npz"))["codes"],
                                np.load(os.path.join(str(tmp_path / "full"), "codes_final.npz"))["codes"])


@pytest.mark.parametrize("kind", ["t5", "decoder"])
def test_task_a_scores_of_the_beams_candidates_equal_the_beam_scores(kind):
  """Task A's full-code-space search scores each candidate as the teacher-forced pass does,
  on either recommender (the T5 reads the soft tokens as encoder input, the decoder as its
  prefix)."""
  import jax
  import jax.numpy as jnp
  from jaxrec.recommender import decoder_steps, steps
  from jaxrec.recommender.decoder import Decoder, DecoderConfig
  from jaxrec.recommender.t5 import T5
  from jaxrec.recommender.t5_layers import T5Config
  codes = jnp.zeros((5, 3), jnp.int32)
  batch = {"history_BxL": jnp.zeros((5, 2), jnp.int32), "mask_BxL": jnp.ones((5, 2), bool),
           "user_B": jnp.arange(5), "target_B": jnp.arange(5)}
  if kind == "t5":
    rec, model = steps, T5(T5Config(level_sizes=(6, 5, 4), d_model=16, d_ff=32, heads=2,
                                    head_dim=8, enc_layers=1, dec_layers=2, dropout=0.0,
                                    rel_buckets=8, rel_max_distance=16, user_buckets=0))
  else:
    rec, model = decoder_steps, Decoder(DecoderConfig(level_sizes=(6, 5, 4), d_model=16, d_ff=24,
                                                      heads=2, head_dim=8, layers=2, dropout=0.0,
                                                      init_std=0.3))
  soft = siit.SoftTokens(3, model.cfg.d_model)
  feats = jnp.asarray(np.random.default_rng(0).normal(size=(5, 7)), jnp.float32)
  params = {"t5": rec.init_params(model, codes, batch, jax.random.key(0)),
            "soft": soft.init(jax.random.key(1), feats)}
  cand, score = siit.decode_items(params, feats, rec=rec, model=model, soft=soft, beam=4)
  for w in range(4):
    got = siit.score_ids(params, feats, cand[:, w], rec=rec, model=model, soft=soft)
    np.testing.assert_allclose(got, score[:, w], rtol=1e-5, atol=1e-5)
  assert (np.diff(np.asarray(score), axis=1) <= 1e-6).all()           # best first


def test_siit_on_the_tiny_llm_refines_and_decodes(tmp_path):
  """siit:tiny_llm (the paper's setting in miniature): a refinement round and the usual
  results on the tests' tiny random Qwen2 with LoRA."""
  cfg = siit_config.get_config("tiny_llm")
  cfg.train.epochs = 1                     # the round comes after epoch 1 (refine_every 1)
  results = pipeline.train_and_evaluate(cfg, str(tmp_path), log=lambda m: None)
  assert 0 < results["parameters_trained"] < results["parameters"]
  assert 0.0 < results["test"]["recall@10"] <= 1.0
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert any("round" in l for l in lines)


def test_siit_moves_counts_moves_down_and_movers_kept():
  """bench/experiments/siit_moves.py's statistics on the two-item case above."""
  from bench.experiments import siit_moves
  current = np.array([[0, 0, 0], [1, 0, 0]], np.int32)
  cand = np.array([[[2, 2, 2], [3, 3, 3]], [[2, 2, 2], [3, 2, 1]]], np.int32)
  score, own = np.array([[-0.1, -0.2], [-0.2, -8.0]]), np.array([-6.0, -5.0])
  for movers, changed, down, kept in (("any", 1.0, .5, 0.0), ("better", .5, 0.0, .5)):
    new, _ = siit.greedy_assign(cand, score, current, SIZES, current_score_N=own,
                                keep_margin=1.0, movers=movers)
    got = siit_moves.round_stats(cand, score, own, current, new, 1.0)
    assert (got["ids_changed"], got["moved_not_better"], got["movers_kept"]) == (changed, down, kept)
    assert got["wants_to_move"] == 1.0


def test_siit_on_an_llm_keeps_its_checkpoint_across_rounds():
  """scientific_llm: LC-Rec's recipe keeps the lowest validation loss, which a round's new
  targets raise; SIIT's keeps decoded NDCG@10, with patience through a round's span and
  room for every round."""
  cfg = siit_config.get_config("scientific_llm")
  tr, sc = cfg.train, cfg.siit
  assert tr.select == "ndcg@10"
  assert tr.patience * tr.eval_every >= sc.refine_every
  assert tr.epochs > sc.refine_every * sc.rounds
