"""SASRec: causality, full-ranking metrics against a brute-force ranking, window samples,
losses against direct computations, the exported item table, bad settings, and the `cf`
stage that lets LETTER and ETEGRec run on a data set of interactions only."""
import functools
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import etegrec
import letter
import sasrec as sasrec_config
import simcit
from jaxrec import metrics, pipeline
from jaxrec.checkpoint import Checkpoints
from jaxrec.config import ConfigError
from jaxrec.data import from_sequences, leave_one_out, load_dataset, sequence_windows
from jaxrec.data.synthetic import SyntheticSpec, generate
from jaxrec.methods import get_method
from jaxrec.recommender import sasrec
from jaxrec.tokenizer.codes import CodeTable
from jaxrec.xla import jit_init

N, L, D = 30, 6, 16
MODEL = sasrec.SASRec(sasrec.SASRecConfig(n_items=N, max_len=L, d=D, blocks=2, heads=2,
                                          dropout=0.0))


@pytest.fixture(scope="module")
def params():
  items = jnp.zeros((2, L), jnp.int32)
  return jit_init(MODEL, {"params": jax.random.key(0)}, items, jnp.ones((2, L), bool), train=False)


def _batch(rng, b=8):
  lengths = rng.integers(1, L + 1, b)
  mask = np.arange(L)[None, :] < lengths[:, None]
  hist = np.where(mask, rng.integers(0, N, (b, L)), 0).astype(np.int32)
  return {"history_BxL": hist, "mask_BxL": mask, "target_B": rng.integers(0, N, b).astype(np.int32),
          "user_B": np.arange(b, dtype=np.int32), "weight_B": np.ones(b, np.float32)}


def test_attention_is_causal_and_ignores_padding(params):
  rng = np.random.default_rng(0)
  hist = rng.integers(0, N, (1, L)).astype(np.int32)
  full = np.ones((1, L), bool)
  out = MODEL.apply(params, hist, full, False)
  for t in range(L - 1):
    changed = hist.copy()
    changed[0, t + 1:] = (changed[0, t + 1:] + 7) % N     # alter the future of position t
    out2 = MODEL.apply(params, changed, full, False)
    chex.assert_trees_all_close(out[0, :t + 1], out2[0, :t + 1], atol=1e-5)
    assert not np.allclose(out[0, t + 1:], out2[0, t + 1:], atol=1e-3), \
        "later positions should see the change"
  # a padded tail (mask False) changes nothing at the real positions, whatever its ids
  short = np.arange(L)[None, :] < 3
  a = MODEL.apply(params, np.where(short, hist, 0), short, False)
  b = MODEL.apply(params, np.where(short, hist, 5), short, False)
  chex.assert_trees_all_close(a[0, :3], b[0, :3], atol=1e-6)


def test_full_ranking_metrics_equal_brute_force(params):
  rng = np.random.default_rng(1)
  batch = _batch(rng, 16)
  scores = np.asarray(sasrec.scores(params, batch, model=MODEL))
  # the score of item i is the last real position's state . item embedding i
  h = np.asarray(MODEL.apply(params, batch["history_BxL"], batch["mask_BxL"], False))
  last = batch["mask_BxL"].sum(1) - 1
  table = np.asarray(params["params"]["item_embed"]["embedding"])
  np.testing.assert_allclose(scores, h[np.arange(16), last] @ table.T, rtol=1e-5, atol=1e-5)
  # make some targets hits at known ranks
  order = np.argsort(-scores, axis=1, kind="stable")
  batch["target_B"][:4] = order[:4, [0, 3, 9, 15]].diagonal()
  sums, top = jax.jit(functools.partial(sasrec.eval_step, model=MODEL, k=20))(params, batch)
  np.testing.assert_array_equal(np.asarray(top), order[:, :20])
  got = metrics.finalize(jax.device_get(sums))
  want = metrics.rank_metrics_np(order[:, :20], batch["target_B"])
  for k in want:
    assert got[k] == pytest.approx(want[k], abs=1e-6), k
  assert got["recall@1"] >= 1 / 16 and got["recall@10"] >= 3 / 16


def test_windows_predict_every_training_target_once():
  rng = np.random.default_rng(2)
  seqs = [rng.integers(0, 50, n) for n in (3, 4, 5, 9, 17, 40)]
  ds = from_sequences("t", seqs, 50)
  max_len = 5
  win = sequence_windows(ds, max_len)
  loo = leave_one_out(ds, max_len)
  assert np.all(win.end_S - win.start_S <= max_len) and np.all(win.end_S > win.start_S)
  # predicted positions of a window: start + 1 .. end; together, exactly the training targets
  predicted = np.concatenate([np.arange(s + 1, e + 1) for s, e in zip(win.start_S, win.end_S)])
  np.testing.assert_array_equal(np.sort(predicted), np.sort(loo["train"].end_S))
  # the most recent window of a long user is full
  u = 5
  mine = win.end_S[win.user_S == u]
  assert mine.max() == ds.offsets_U1[u] + 40 - 3


def test_sequence_targets_shift_by_one():
  batch = {"history_BxL": jnp.asarray([[5, 6, 7, 0], [1, 2, 0, 0]]),
           "mask_BxL": jnp.asarray([[1, 1, 1, 0], [1, 1, 0, 0]], bool),
           "target_B": jnp.asarray([8, 3]), "weight_B": jnp.asarray([1.0, 0.0])}
  targets, weights = sasrec.sequence_targets(batch)
  np.testing.assert_array_equal(np.asarray(targets)[0, :3], [6, 7, 8])
  np.testing.assert_array_equal(np.asarray(targets)[1, :2], [2, 3])
  np.testing.assert_array_equal(np.asarray(weights), [[1, 1, 1, 0], [0, 0, 0, 0]])


def test_losses_equal_direct_computation(params):
  rng = np.random.default_rng(3)
  batch = _batch(rng, 8)
  key = jax.random.key(4)
  h = np.asarray(MODEL.apply(params, batch["history_BxL"], batch["mask_BxL"], False))
  table = np.asarray(params["params"]["item_embed"]["embedding"])
  targets, w = (np.asarray(x) for x in sasrec.sequence_targets(batch))
  logits = h @ table.T
  ce = -np.take_along_axis(jax.nn.log_softmax(logits, -1), targets[..., None], -1)[..., 0]
  got, _ = sasrec.loss_fn(params, batch, key, model=MODEL, loss="ce", negatives=0)
  assert float(got) == pytest.approx(float((ce * w).sum() / w.sum()), rel=1e-5)
  # sampled softmax with every item as a negative: the full softmax over the catalogue
  # (the positive's duplicate among the negatives is masked out)
  sampled = sasrec.sampled_softmax(jnp.asarray(h), jnp.asarray(table), jnp.asarray(targets),
                                   jnp.arange(N))
  np.testing.assert_allclose(np.asarray(sampled), ce, rtol=1e-5, atol=1e-5)
  # bce: the paper's loss with one negative per position
  got_b, _ = sasrec.loss_fn(params, batch, key, model=MODEL, loss="bce", negatives=0)
  neg = np.asarray(sasrec.other_items(jax.random.split(key)[1], jnp.asarray(targets), N))
  sig = lambda x: 1 / (1 + np.exp(-x))
  pos_s = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  neg_s = np.take_along_axis(logits, neg[..., None], -1)[..., 0]
  bce = -np.log(sig(pos_s)) - np.log(1 - sig(neg_s))
  assert float(got_b) == pytest.approx(float((bce * w).sum() / w.sum()), rel=1e-4)


def test_bce_negatives_are_never_the_target():
  neg = np.asarray(sasrec.other_items(jax.random.key(0), jnp.full((4, 1000), 3), 5))
  assert not np.any(neg == 3)
  assert set(np.unique(neg)) == {0, 1, 2, 4}


def test_code_input_items_share_what_their_codes_share():
  """item_input='codes': an item's vector is the sum of its levels' code vectors, so two
  items with one ID score alike after any history; 'id+codes' adds a free vector per item."""
  codes = np.stack([np.arange(N) % 4, np.arange(N) % 8], axis=1).astype(np.int32)
  codes[7] = codes[3]                                # items 3 and 7: one semantic ID
  rng = np.random.default_rng(5)
  batch = _batch(rng, 8)
  batch["history_BxL"][:, 0] = 3                     # every history starts with item 3
  for item_input in ("codes", "id+codes"):
    model = sasrec.SASRec(sasrec.SASRecConfig(n_items=N, max_len=L, d=D, blocks=1, heads=2,
                                              dropout=0.0, item_input=item_input,
                                              level_sizes=(4, 8)))
    p = jit_init(model, {"params": jax.random.key(1)}, jnp.zeros((2, L), jnp.int32),
                 jnp.ones((2, L), bool), train=False, codes_NxC=codes)
    table = np.asarray(sasrec.item_table(p, model=model, codes_NxC=codes))
    want = sum(np.asarray(p["params"][f"code_embed_{l}"]["embedding"])[codes[:, l]]
               for l in range(2))
    if item_input == "id+codes":
      want = want + np.asarray(p["params"]["item_embed"]["embedding"])
    else:
      assert "item_embed" not in p["params"]
    np.testing.assert_allclose(table, want, rtol=1e-6, atol=1e-6)
    scores = np.asarray(sasrec.scores(p, batch, model=model, codes_NxC=codes))
    assert np.allclose(scores[:, 3], scores[:, 7]) == (item_input == "codes")
    # the input side reads the same table: swapping item 3 for item 7 in every history
    # changes nothing with codes alone
    swapped = dict(batch, history_BxL=np.where(batch["history_BxL"] == 3, 7, batch["history_BxL"]))
    same = np.allclose(sasrec.scores(p, swapped, model=model, codes_NxC=codes), scores, atol=1e-5)
    assert same == (item_input == "codes")


def test_bad_settings_are_refused_before_training(tmp_path):
  cfg = sasrec_config.get_config("tiny")
  cfg.model.loss = "sampled"
  cfg.model.negatives = 500                      # the tiny catalogue has 120 items
  with pytest.raises(ConfigError, match="negatives=500"):
    pipeline.train_and_evaluate(cfg, str(tmp_path / "a"), log=lambda m: None)
  cfg = sasrec_config.get_config("tiny")
  cfg.model.heads = 3                            # d = 16
  with pytest.raises(ConfigError, match="divisible by heads"):
    pipeline.train_and_evaluate(cfg, str(tmp_path / "b"), log=lambda m: None)
  assert not os.path.exists(tmp_path / "b" / "checkpoints")
  cfg = sasrec_config.get_config("tiny")
  cfg.model.item_input = "codes"                 # no model.codes
  with pytest.raises(ConfigError, match="reads a code table"):
    pipeline.train_and_evaluate(cfg, str(tmp_path / "c"), log=lambda m: None)
  CodeTable(np.zeros((50, 2), np.int32), (4, 8), {}, "x").save(str(tmp_path / "codes"))
  cfg.model.codes = str(tmp_path / "codes")      # 50 items coded, the catalogue has 120
  with pytest.raises(ConfigError, match="codes 50 items, the data set has 120"):
    pipeline.train_and_evaluate(cfg, str(tmp_path / "d"), log=lambda m: None)
  cfg.model.codes = str(tmp_path)
  with pytest.raises(ConfigError, match="no codes.npz there"):
    pipeline.train_and_evaluate(cfg, str(tmp_path / "e"), log=lambda m: None)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("sasrec"))
  results = pipeline.train_and_evaluate(sasrec_config.get_config("tiny"), workdir,
                                       log=lambda m: None)
  return workdir, results


def test_tiny_run_learns_and_exports_its_item_table(tiny_run):
  workdir, results = tiny_run
  for name in ("results.json", "report.png", "metrics.jsonl", "synthetic.sasrec16.npy"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert results["tokenizer"] is None and results["cf_embeddings"].endswith("synthetic.sasrec16.npy")
  losses = [json.loads(l)["loss"] for l in open(os.path.join(workdir, "metrics.jsonl"))
            if '"loss"' in l]
  assert losses[-1] < losses[0]
  exported = np.load(os.path.join(workdir, "synthetic.sasrec16.npy"))
  best = Checkpoints(os.path.join(workdir, "checkpoints", "best")).restore(None)[1]
  np.testing.assert_array_equal(exported, np.asarray(best["params"]["params"]["item_embed"]["embedding"]))
  assert exported.shape == (120, 16) and exported.dtype == np.float32


def test_tiny_run_on_code_input_exports_its_item_vectors(tmp_path):
  codes = np.stack([np.arange(120) // 10, np.arange(120) % 10], axis=1).astype(np.int32)
  CodeTable(codes, (12, 10), {}, "x").save(str(tmp_path / "codes"))
  cfg = sasrec_config.get_config("tiny")
  cfg.model.item_input, cfg.model.codes = "codes", str(tmp_path / "codes")
  cfg.train.epochs = 1
  workdir = str(tmp_path / "run")
  results = pipeline.train_and_evaluate(cfg, workdir, log=lambda m: None)
  assert results["test"]["recall@10"] > 0
  exported = np.load(results["cf_embeddings"])
  params = Checkpoints(os.path.join(workdir, "checkpoints", "best")).restore(None)[1]["params"]
  level = [np.asarray(params["params"][f"code_embed_{l}"]["embedding"]) for l in range(2)]
  np.testing.assert_allclose(exported, level[0][codes[:, 0]] + level[1][codes[:, 1]],
                             rtol=1e-6, atol=1e-6)


def _write_recbole(directory, name="toy"):
  """The tiny synthetic data set as a RecBole .inter file: interactions only."""
  ds, _ = generate(SyntheticSpec(n_users=200, n_items=120, n_topics=3, n_subtopics=3))
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, f"{name}.inter"), "w") as f:
    f.write("user_id:token\titem_id:token\ttimestamp:float\n")
    for u in range(ds.n_users):
      for t, i in enumerate(ds.sequence(u)):
        f.write(f"u{u}\ti{i}\t{t}\n")
  return name


def _interactions_only(cfg, directory, cache):
  cfg.data.source, cfg.data.dir, cfg.data.name = "recbole", directory, "toy"
  cfg.data.features = ()
  cfg.tokenizer.feature = "cf"
  cfg.cf.cache_dir = cache
  cfg.train.epochs = 2
  return cfg


def test_letter_runs_on_interactions_only_and_etegrec_reuses_its_cf(tmp_path):
  data = str(tmp_path / "data")
  _write_recbole(data)
  cache = str(tmp_path / "cache")
  cfg = _interactions_only(letter.get_config("tiny"), data, cache)
  assert cfg.tokenizer.letter.cf_feature == "cf" and cfg.cf.model.d == cfg.tokenizer.code_dim
  logs = []
  res = pipeline.train_and_evaluate(cfg, str(tmp_path / "letter"), log=logs.append)
  assert any("training SASRec" in l for l in logs), logs[:5]
  assert any("[cf sasrec] epoch" in l and "valid" in l for l in logs)
  assert res["dataset"] == "toy" and 0 <= res["test"]["recall@10"] <= 1
  derived = [d for d in os.listdir(cache) if d.startswith("sasrec-toy-")]
  assert len(derived) == 1
  # a second method on the same data reuses the derived embeddings (ETEGRec's training on
  # them is the same as on the synthetic set's `cf`: tests/test_etegrec.py)
  cfg = _interactions_only(etegrec.get_config("tiny"), data, cache)
  logs = []
  ds = pipeline.ensure_features(cfg, load_dataset(cfg.data), get_method("etegrec"), log=logs.append)
  assert any("cf: reusing" in l for l in logs) and not any("training SASRec" in l for l in logs)
  assert os.listdir(cache) == derived
  assert ds.features["cf"].shape == (ds.n_items, cfg.cf.model.d)


def test_synthetic_data_loads_only_the_asked_features_and_derives_cf(monkeypatch):
  """`data.features` selects the synthetic set's features as it does a reader's files, so a
  `cf` view left out is derived from the interactions (SASRec) instead of the generator's."""
  cfg = simcit.get_config("tiny")
  both = load_dataset(cfg.data)
  cfg.data.features = ("content",)
  ds = load_dataset(cfg.data)
  assert set(both.features) == {"content", "cf"} and set(ds.features) == {"content"}
  chex.assert_trees_all_equal(ds.features["content"], both.features["content"])
  derived = np.arange(ds.n_items * 4, dtype=np.float32).reshape(ds.n_items, 4)
  calls = []
  monkeypatch.setattr(pipeline, "cf_embeddings",
                      lambda c, d, log: calls.append((c.cf.model.d, d.n_items)) or derived)
  out = pipeline.ensure_features(cfg, ds, get_method("simcit"), log=lambda m: None)
  assert calls == [(cfg.cf.model.d, ds.n_items)]
  chex.assert_trees_all_equal(out.features["cf"], derived)
  assert pipeline.ensure_features(cfg, both, get_method("simcit")) is both   # nothing to derive


def test_missing_feature_is_one_clear_error(tmp_path):
  from jaxrec.data import DataError
  cfg = letter.get_config("tiny")
  cfg.tokenizer.feature = "image"
  with pytest.raises(ConfigError, match="item feature 'image' is needed.*data.features.*'cf'"):
    pipeline.train_and_evaluate(cfg, str(tmp_path / "w"), log=lambda m: None)
  cfg.tokenizer.feature = "text"            # derivable, but the synthetic set has no text
  with pytest.raises(DataError, match="synthetic: the data set has no item text"):
    pipeline.train_and_evaluate(cfg, str(tmp_path / "w"), log=lambda m: None)


def test_joined_views_feed_one_tokenizer(tmp_path):
  """tokenizer.feature='content+cf': the parts (each row at unit L2 norm) side by side, the
  feature the RQ-VAE fits (SimCIT's equal-information control)."""
  import tiger
  cfg = tiger.get_config("tiny")
  cfg.data.features = ("content", "cf")
  cfg.tokenizer.feature = "content+cf"
  run = pipeline.setup(cfg, str(tmp_path), log=lambda m: None)
  parts = [run.dataset.features[p] for p in ("content", "cf")]
  joined = run.dataset.features["content+cf"]
  assert joined.shape == (run.dataset.n_items, sum(p.shape[1] for p in parts))
  d = parts[0].shape[1]
  for half, part in ((joined[:, :d], parts[0]), (joined[:, d:], parts[1])):
    np.testing.assert_allclose(np.linalg.norm(half, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(half * np.linalg.norm(part, axis=1, keepdims=True), part, rtol=1e-4,
                               atol=1e-5)
  assert run.codes.shape[0] == run.dataset.n_items
  with pytest.raises(ConfigError, match="item feature 'image' is needed"):
    cfg.tokenizer.feature = "content+image"
    pipeline.ensure_features(cfg, load_dataset(cfg.data), get_method("tiger"), log=lambda m: None)
