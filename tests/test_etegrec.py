"""ETEGRec: disjoint updates of the two steps, SIA and PSA on hand cases, on-device re-coding
with valid decoding, and a run killed in the middle of a cycle resumes to the same result."""
import json
import os

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import etegrec as etegrec_configs
from jaxrec import decode, pipeline
from jaxrec.recommender import steps
from jaxrec.training import loop
from jaxrec.training.run import set_codes
from jaxrec.data import BatchIterator
from jaxrec.methods import etegrec


def _ref_kl(p, q):
  return float(np.sum(p * (np.log(p) - np.log(q))))


def _softmax(x):
  e = np.exp(np.asarray(x, np.float64) - np.max(x))
  return e / e.sum()


def test_sia_zero_for_identical_and_hand_value():
  logits = jax.random.normal(jax.random.key(0), (3, 2, 5))
  mask = jnp.array([True, True, False])
  chex.assert_trees_all_close(etegrec.sia_loss(logits, logits, mask), 0.0, atol=1e-6)
  a = np.array([[[0.0, 1.0, 2.0]], [[1.0, 1.0, 0.0]]])     # [B=2, C=1, K=3]
  b = np.array([[[2.0, 0.0, 0.0]], [[0.0, 0.0, 3.0]]])
  expected = np.mean([_ref_kl(_softmax(a[i, 0]), _softmax(b[i, 0])) +
                      _ref_kl(_softmax(b[i, 0]), _softmax(a[i, 0])) for i in range(2)])
  got = etegrec.sia_loss(jnp.asarray(a), jnp.asarray(b), jnp.array([True, True]))
  chex.assert_trees_all_close(got, expected, rtol=1e-5)
  # A masked row does not count.
  got1 = etegrec.sia_loss(jnp.asarray(a), jnp.asarray(b), jnp.array([True, False]))
  expected1 = (_ref_kl(_softmax(a[0, 0]), _softmax(b[0, 0])) +
               _ref_kl(_softmax(b[0, 0]), _softmax(a[0, 0])))
  chex.assert_trees_all_close(got1, expected1, rtol=1e-5)


def test_psa_hand_value():
  dec = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 3.0]])
  rec = np.array([[2.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
  mask = np.array([True, True, False])                      # row 3 is a repeated target
  t = 0.07
  n = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  sim = n(rec)[:2] @ n(dec)[:2].T / t                          # only unique rows take part
  ce = lambda s: np.mean([-(s[i, i] - np.log(np.exp(s[i]).sum())) for i in range(2)])
  expected = ce(sim) + ce(sim.T)
  got = etegrec.psa_loss(jnp.asarray(dec), jnp.asarray(rec), jnp.asarray(mask), t)
  chex.assert_trees_all_close(got, expected, rtol=1e-5)


def test_unique_targets_marks_first_real_occurrence():
  t = jnp.array([4, 2, 4, 7, 2, 9])
  w = jnp.array([1, 1, 1, 1, 1, 0.0])
  chex.assert_trees_all_equal(etegrec.unique_targets(t, w),
                              jnp.array([True, True, False, True, False, False]))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  cfg = etegrec_configs.get_config("tiny")
  run = pipeline.setup(cfg, str(tmp_path_factory.mktemp("ete")), log=lambda m: None)
  it = BatchIterator(run.dataset, run.splits["train"], cfg.train.batch_size, run.buckets,
                     shuffle=True, seed=0)
  plan = etegrec.training_plan(run, jax.random.key(1), len(it))
  batch = run.shard(next(iter(it.epoch_batches())))
  return cfg, run, plan, batch


def _copy(tree):
  return jax.tree.map(lambda x: np.array(x), tree)


def test_each_step_updates_only_its_model(tiny_run):
  cfg, run, plan, batch = tiny_run
  stage = plan.stages[0]
  state = plan.state
  before = _copy(state)
  # Epoch 0: tokenizer step; epoch 3 (after warm-up, odd): recommender step with alignment.
  for _ in range(2):   # the first step of a warm-up schedule has learning rate 0
    state, out = stage.step(0)(state, batch, run.codes, jax.random.key(0))
  chex.assert_trees_all_equal(_copy(state.rec), before.rec)
  assert not np.allclose(np.asarray(state.tok.params["params"]["codebooks"]),
                         before.tok.params["params"]["codebooks"])
  mid = _copy(state)
  for _ in range(2):
    state, out = stage.step(3)(state, batch, run.codes, jax.random.key(0))
  chex.assert_trees_all_equal(_copy(state.tok), mid.tok)
  for name in ("t5", "enc_adapter", "dec_adapter"):   # the alignment losses reach both adapters
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), _copy(state.rec.params[name]),
                           mid.rec.params[name])
    assert any(jax.tree.leaves(changed)), name
  assert np.isfinite(float(out["sia"])) and np.isfinite(float(out["psa"]))
  plan.state = state


def test_short_part_computes_what_the_whole_batch_does(tiny_run):
  """etegrec.short_rows: the batch's shortest rows run padded to fewer items; when they fit,
  every loss term (and the code loss's gradient) is the whole batch's; when they do not, the
  train step runs the whole batch (a split would cut histories), as without the option."""
  cfg, run, plan, _ = tiny_run
  lens = np.array([1, 6, 2, 3, 1, 5, 2, 0])                    # the last row: padding
  mask = np.arange(6)[None, :] < lens[:, None]
  rng = np.random.default_rng(2)
  n = run.dataset.n_items
  batch = {"history_BxL": np.where(mask, rng.integers(0, n, (8, 6)), 0).astype(np.int32),
           "mask_BxL": mask, "target_B": rng.integers(0, n, 8).astype(np.int32),
           "user_B": np.arange(8, dtype=np.int32), "weight_B": (lens > 0).astype(np.float32)}
  batch = jax.tree.map(jnp.asarray, batch)
  feats = jnp.asarray(run.dataset.features[cfg.tokenizer.feature], jnp.float32)
  common = dict(t5=run.model, tok=run.tokenizer[0], train_rec=False, train_tok=False,
                sia_sign="negative", psa_temperature=0.07)

  def terms(rec_params, s):
    return etegrec.forward_terms(rec_params, plan.state.tok.params, batch, run.codes, feats,
                                 jax.random.key(0), short=s, **common)

  rec = plan.state.rec.params
  whole = jax.jit(terms, static_argnums=1)(rec, ())
  grad = jax.jit(jax.grad(lambda p, s: terms(p, s)["code"]), static_argnums=1)
  for short in ((5, 3), (3, 1)):                               # sorted lengths 0 1 1 2 2 3 5 6
    assert steps.splits(batch, short) and bool(steps.short_fits(batch, short))
    chex.assert_trees_all_close(jax.jit(terms, static_argnums=1)(rec, short), whole,
                                rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(grad(rec, short), grad(rec, ()), rtol=1e-4, atol=1e-6)
  assert not bool(steps.short_fits(batch, (7, 3)))            # the 7th shortest has 5 items
  assert not steps.splits(batch, (8, 3)) and not steps.splits(batch, (5, 6))
  step = lambda s: jax.jit(functools.partial(
      etegrec.train_step, part="rec", t5=run.model, tok=run.tokenizer[0], tx=optax.sgd(0.1),
      lr_fn=lambda c: 0.1, sia_sign="negative", psa_temperature=0.07, short=s))
  state = jax.tree.map(jnp.array, plan.state.replace(rec=plan.state.rec.replace(
      opt_state=optax.sgd(0.1).init(plan.state.rec.params))))
  args = (batch, run.codes, jax.random.key(3), jnp.ones(2), feats)
  chex.assert_trees_all_close(step((7, 3))(jax.tree.map(jnp.array, state), *args),
                              step(())(jax.tree.map(jnp.array, state), *args),
                              rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["joint", "frozen"])
def test_ablations_of_the_alternation(tiny_run, mode):
  """'joint': every epoch's step updates both models and every epoch re-codes the items;
  'frozen': every epoch's step updates the recommender only and no epoch re-codes."""
  cfg, run, _, batch = tiny_run
  run.cfg.etegrec.alternation = mode
  try:
    plan = etegrec.training_plan(run, jax.random.key(1), 4)
  finally:
    run.cfg.etegrec.alternation = "alternate"
  stage, state = plan.stages[0], plan.state
  before = _copy(state)
  for epoch in (0, 0, 3):     # the first step of a warm-up schedule has learning rate 0
    state, out = stage.step(epoch)(state, batch, run.codes, jax.random.key(0))
  changed = lambda a, b: any(jax.tree.leaves(jax.tree.map(lambda x, y: not np.allclose(x, y),
                                                          _copy(a), b)))
  assert changed(state.rec.params, before.rec.params)
  assert changed(state.tok.params, before.tok.params) == (mode == "joint")
  assert np.isfinite(float(out["loss"])) and ("lr_tok" in out) == (mode == "joint")
  codes, record = stage.after_epoch(state, 1, run)
  assert (codes is not None, record is not None) == ((mode == "joint",) * 2)


def test_ablation_schedules_span_the_epochs_each_model_trains():
  """4 epochs of 10 steps, cycles of 2, no warm-up: the tokenizer's cosine spans 2 epochs when
  alternating (ended at step 20), 4 when 'joint' (half-way at 20); the recommender's spans 4
  in 'joint' and 'frozen' (half-way at 20), 2 when alternating (ended at 20)."""
  cfg = etegrec_configs.get_config("tiny")
  tc, ec = cfg.train, cfg.etegrec
  tc.epochs, ec.cycle, tc.accumulate, tc.lr_end = 4, 2, 1, 0.0
  ec.rec_warmup_steps = ec.tok_warmup_steps = 0
  at20 = {}
  for mode in etegrec.MODES:
    ec.alternation = mode
    opt = etegrec._optimizers(tc, ec, 10)
    at20[mode] = (float(opt["rec"][1](20)) / tc.lr, float(opt["tok"][1](20)) / ec.tok_lr)
  np.testing.assert_allclose(at20["alternate"], (0.0, 0.0), atol=1e-6)
  np.testing.assert_allclose(at20["joint"], (0.5, 0.5), atol=1e-6)
  np.testing.assert_allclose(at20["frozen"][0], 0.5, atol=1e-6)


def test_recode_rebuilds_tables_and_decoding_stays_valid(tiny_run):
  cfg, run, plan, batch = tiny_run
  old = np.asarray(run.codes)
  tok_model, _ = run.tokenizer
  # A tokenizer moved far from the one that made the current codes.
  params = jax.tree.map(lambda x: x, plan.state.tok.params)
  books = params["params"]["codebooks"]
  params["params"]["codebooks"] = books[:, ::-1]              # permute the codes of each level
  codes, changed, semantic, largest = etegrec.recode(
      params, jnp.asarray(run.dataset.features["cf"]), run.codes, model=tok_model)
  codes = np.asarray(codes)
  assert codes.shape == old.shape
  frac = np.mean(np.any(codes != old, axis=1))
  chex.assert_trees_all_close(float(changed), frac, rtol=1e-6)
  chex.assert_trees_all_close(float(semantic), np.mean(np.any(codes[:, :-1] != old[:, :-1], 1)),
                              rtol=1e-6)
  assert float(semantic) <= float(changed)
  assert frac > 0.5
  assert len(np.unique(codes, axis=0)) == len(codes)          # the collision level holds
  set_codes(run, jnp.asarray(codes))
  ref = decode.prefix_tables(codes)
  chex.assert_trees_all_equal(jax.device_get(run.tables), jax.device_get(ref))
  _, items = run.eval_fn(plan.rec_params(plan.state), batch, run.codes, run.tables)
  items = np.asarray(items)
  assert ((items >= 0) & (items < run.dataset.n_items)).all()
  assert all(len(set(row)) == len(row) for row in items)
  set_codes(run, jnp.asarray(old))


def _run(workdir, log=lambda m: None):
  return pipeline.train_and_evaluate(etegrec_configs.get_config("tiny"), workdir, log=log)


def test_resume_mid_cycle_equals_uninterrupted(tmp_path, monkeypatch):
  full_dir = str(tmp_path / "full")
  full = _run(full_dir)
  assert full["best"]["stage"] == "finetune"
  lines = [json.loads(l) for l in open(os.path.join(full_dir, "metrics.jsonl"))]
  changes = [(l["ids_changed"], l["semantic_changed"]) for l in lines if "ids_changed" in l]
  assert len(changes) == 2 and all(0.0 <= s <= c <= 1.0 for c, s in changes)   # epochs 1, 3
  assert os.path.exists(os.path.join(full_dir, "codes_final.npz"))
  other = full["test_free"]                     # the run decodes constrained; also free
  assert other["users"] == full["test"]["users"] and full["test"]["err@10"] == 0.0
  assert set(other) == set(full["test"])        # the same metrics, err@K included
  ranks = np.load(os.path.join(full_dir, "ranks.npz"))       # both decodings' ranks, user by user
  assert sorted(ranks.files) == ["test", "test_free", "valid"]
  for key, figures in (("test", full["test"]), ("test_free", other)):
    r = ranks[key][ranks[key] >= 0]
    np.testing.assert_allclose(((r >= 1) & (r <= 10)).mean(), figures["recall@10"], atol=1e-9)

  workdir = str(tmp_path / "resumed")
  real = loop.check_and_log

  def crash(pending, *a, **k):
    if pending[0] == 45:  # inside epoch 3, the second cycle's tokenizer epoch; resumes at 40
      raise KeyboardInterrupt("simulated kill")
    return real(pending, *a, **k)

  monkeypatch.setattr(loop, "check_and_log", crash)
  with pytest.raises(KeyboardInterrupt):
    _run(workdir)
  monkeypatch.setattr(loop, "check_and_log", real)
  logs = []
  resumed = _run(workdir, logs.append)
  assert any("resumed from" in l and "step 40" in l for l in logs), logs
  for split in ("valid", "test"):
    assert resumed[split] == {**full[split], "decode_s": resumed[split]["decode_s"]}
  np.testing.assert_array_equal(np.load(os.path.join(workdir, "codes_final.npz"))["codes"],
                                np.load(os.path.join(full_dir, "codes_final.npz"))["codes"])
  again = np.load(os.path.join(workdir, "ranks.npz"))
  for key in ranks.files:
    np.testing.assert_array_equal(again[key], ranks[key])
  strip = lambda d: [{k: v for k, v in json.loads(l).items() if k not in ("samples_per_s", "decode_s")}
                     for l in open(os.path.join(d, "metrics.jsonl"))
                     if "compile" not in json.loads(l)]   # compilations: per invocation
  assert strip(workdir) == strip(full_dir)


def test_official_recommender_schedule_ends_part_way_down():
  """etegrec.rec_schedule='all' (the official trainer): the cosine spans every epoch's steps
  and advances in recommender epochs only; with 4 epochs in cycles of 2 (2 recommender
  epochs) and no warm-up it ends at half the peak, where 'stage' ends at 0."""
  cfg = etegrec_configs.get_config("tiny")
  tc, ec = cfg.train, cfg.etegrec
  tc.epochs, ec.cycle, ec.rec_warmup_steps, tc.lr_end, tc.accumulate = 4, 2, 0, 0.0, 1
  end = 2 * 10                                   # 2 recommender epochs of 10 steps
  ec.rec_schedule = "all"
  lr_all = float(etegrec._optimizers(tc, ec, 10)["rec"][1](end))
  ec.rec_schedule = "stage"
  lr_stage = float(etegrec._optimizers(tc, ec, 10)["rec"][1](end))
  np.testing.assert_allclose([lr_all, lr_stage], [0.5 * tc.lr, 0.0], atol=1e-9)


def test_warmups_count_micro_batches_or_a_share_of_the_schedule():
  """The official warm-up counts scheduler steps, one per batch of 512 of the whole data set
  (accelerate steps the schedule once per process at each update): with 4 accumulated
  micro-batches per update, 12 steps of warm-up reach the peak at micro-step 12, not 48. With
  `warmup_frac` each warm-up is that share of its own schedule: 0.25 of the recommender's 2
  epochs x 40 micro-steps (peak at 20), of the tokenizer's 2 epochs (peak at 20 too)."""
  cfg = etegrec_configs.get_config("tiny")
  tc, ec = cfg.train, cfg.etegrec
  tc.epochs, ec.cycle, tc.accumulate, tc.lr_end = 4, 2, 4, 0.0
  ec.rec_warmup_steps, ec.tok_warmup_steps = 12, 12
  opt = etegrec._optimizers(tc, ec, 40)
  rec, tok = opt["rec"][1], opt["tok"][1]
  lr = lambda f, steps: [float(f(i)) for i in steps]
  np.testing.assert_allclose(lr(rec, (8, 12)), [tc.lr * 2 / 3, tc.lr], rtol=1e-5)
  assert lr(rec, (16,))[0] < tc.lr
  np.testing.assert_allclose(lr(tok, (8, 12)), [ec.tok_lr * 2 / 3, ec.tok_lr], rtol=1e-5)
  ec.warmup_frac = 0.25
  opt = etegrec._optimizers(tc, ec, 40)
  rec, tok = opt["rec"][1], opt["tok"][1]
  np.testing.assert_allclose(lr(rec, (16, 20)), [tc.lr * 4 / 5, tc.lr], rtol=1e-5)
  np.testing.assert_allclose(lr(tok, (16, 20)), [ec.tok_lr * 4 / 5, ec.tok_lr], rtol=1e-5)
  assert etegrec_configs.get_config("scientific").etegrec.warmup_frac == 0.0394


def test_official_variants_init_the_adapters_like_every_linear(tmp_path):
  """model.init_std > 0: the SIA / PSA adapters are N(0, std) as the official code's every
  Linear (their std is within 10 % of it), biases zero."""
  cfg = etegrec_configs.get_config("tiny")
  cfg.model.init_std, cfg.model.logit_scale = 0.02, False
  run = pipeline.setup(cfg, str(tmp_path), log=lambda m: None)
  opt = etegrec._optimizers(cfg.train, cfg.etegrec, 10)
  state = etegrec._initial_state(run, jax.random.key(0), opt["rec"][0], opt["tok"][0])
  for name in ("enc_adapter", "dec_adapter"):
    k = np.asarray(state.rec.params[name]["kernel"])
    assert abs(k.std() - 0.02) < 0.002, (name, k.std())
    assert not np.asarray(state.rec.params[name]["bias"]).any()
