"""LETTER: each loss on a hand-computed case, where its gradients go, balanced clusters,
Sinkhorn collision re-assignment on a constructed colliding set, end-to-end tiny run."""
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import letter as letter_configs
from jaxrec import pipeline
from jaxrec.data import load_dataset
from jaxrec.methods import letter
from jaxrec.recommender.steps import code_loss
from jaxrec.tokenizer.build import assign_catalogue
from jaxrec.tokenizer.train import encode_catalogue
from jaxrec.tokenizer.kmeans import balanced_kmeans
from jaxrec.tokenizer.rqvae import RQVAE, rqvae_config
from jaxrec.tokenizer.train import kmeans_init
from jaxrec.xla import jit_init


def _ce(logits, label):
  logits = np.asarray(logits, np.float64)
  return -(logits[label] - np.log(np.sum(np.exp(logits))))


def test_cf_loss_hand_case():
  q = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  cf = jnp.array([[1.0, 0.0], [0.0, 2.0]])
  # logits q @ cf.T = [[1, 0], [0, 2]]; row b's positive is column b.
  expected = (_ce([1.0, 0.0], 0) + _ce([0.0, 2.0], 1)) / 2
  chex.assert_trees_all_close(letter.cf_loss(q, cf), expected, rtol=1e-6)
  # Temperature divides the logits.
  expected_t = (_ce([2.0, 0.0], 0) + _ce([0.0, 4.0], 1)) / 2
  chex.assert_trees_all_close(letter.cf_loss(q, cf, 0.5), expected_t, rtol=1e-6)


def test_diversity_loss_hand_case_with_fixed_groups():
  book = jnp.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [-1.0, 0.5]])
  groups = jnp.array([0, 0, 1, 1], jnp.int32)   # two codes per group: the positive is forced
  members, sizes, pos = letter.membership(groups, 2)
  codes = jnp.array([0, 2, 3], jnp.int32)
  positives, valid = letter.draw_positives(jax.random.key(7), codes, groups, members, sizes, pos)
  chex.assert_trees_all_equal(positives, jnp.array([1, 3, 2], jnp.int32))
  assert bool(valid.all())
  b = np.asarray(book, np.float64)
  expected = 0.0
  for c, p in ((0, 1), (2, 3), (3, 2)):
    logits = b[c] @ b.T
    logits = np.delete(logits, c)                 # own code masked out
    expected += _ce(logits, p if p < c else p - 1)
  expected /= 3
  got = letter.diversity_loss(book, codes, positives, valid)
  chex.assert_trees_all_close(got, expected, rtol=1e-5)


def test_membership_and_positives_stay_in_group():
  # Codes 1..63 in groups 0..3 at random, code 0 alone in group 4.
  groups = jax.random.randint(jax.random.key(0), (64,), 0, 4).astype(jnp.int32).at[0].set(4)
  members, sizes, pos = letter.membership(groups, 5)
  g, m = np.asarray(groups), np.asarray(members)
  for grp in range(5):
    listed = sorted(int(c) for c in m[grp] if c >= 0)
    assert listed == sorted(np.flatnonzero(g == grp).tolist())
  codes = jnp.tile(jnp.arange(64, dtype=jnp.int32), 500)
  positives, valid = letter.draw_positives(jax.random.key(3), codes, groups, members, sizes, pos)
  codes, positives, valid = map(np.asarray, (codes, positives, valid))
  assert not valid[codes == 0].any()                         # group 4 has one member
  ok = valid
  assert (g[positives[ok]] == g[codes[ok]]).all()
  assert (positives[ok] != codes[ok]).all()
  # Every other member is reachable: code 2's draws cover its whole group but itself.
  drawn = set(positives[codes == 2].tolist())
  assert drawn == set(np.flatnonzero(g == g[2]).tolist()) - {2}


def test_balanced_kmeans_on_a_skewed_codebook():
  x = jax.random.normal(jax.random.key(0), (256, 32)).at[:200].multiply(0.05)
  sizes = np.bincount(np.asarray(balanced_kmeans(jax.random.key(1), x, 10)), minlength=10)
  assert sizes.min() >= 8 and sizes.max() <= 40, sizes   # LETTER's bounds: 10..60


def test_ranking_loss_is_cross_entropy_at_tau_one():
  logits = jax.random.normal(jax.random.key(0), (5, 3, 7)) * 3
  labels = jax.random.randint(jax.random.key(1), (5, 3), 0, 7)
  w = jnp.ones(5)
  ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
  chex.assert_trees_all_close(code_loss(logits, labels, w, 1.0)[0], ce, rtol=1e-6)
  ce2 = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits / 0.7, labels))
  chex.assert_trees_all_close(code_loss(logits, labels, w, 0.7)[0], ce2, rtol=1e-6)


@pytest.fixture(scope="module")
def tiny_tokenizer():
  cfg = letter_configs.get_config("tiny")
  ds = load_dataset(cfg.data)
  arch = rqvae_config(cfg.tokenizer, ds.features["content"].shape[1])
  model = RQVAE(arch)
  x = jnp.asarray(ds.features["content"][:32])
  params = jit_init(model, {"params": jax.random.key(0)}, x, train=False)
  params = kmeans_init(params, jnp.asarray(ds.features["content"]), jax.random.key(1), model,
                       5, "kmeans++")
  return cfg, ds, model, params, x


def _term_grads(terms, data, tiny_tokenizer):
  cfg, ds, model, params, x = tiny_tokenizer
  key = jax.random.key(2)
  aux = terms.epoch_aux(params, model, data, key) if terms.beta else None
  batch = {"x_BxF": x, "idx_B": jnp.arange(32), "data": data, "epoch": aux}

  def f(p):
    out = model.apply(p, x, True, key)
    return terms(p, model, out, batch, key)[0]

  return jax.grad(f)(params)["params"]


def _norm(tree):
  return float(optax.tree.norm(tree))


def test_cf_gradient_reaches_encoder_not_codebooks(tiny_tokenizer):
  cfg, ds = tiny_tokenizer[:2]
  data = {"cf_NxD": jnp.asarray(ds.features["cf"])}
  g = _term_grads(letter.LetterTerms(alpha=1.0, beta=0.0), data, tiny_tokenizer)
  assert _norm(g["encoder"]) > 1e-6
  assert _norm(g["codebooks"]) == 0.0
  assert _norm(g["decoder"]) == 0.0


def test_diversity_gradient_reaches_codebooks_only(tiny_tokenizer):
  g = _term_grads(letter.LetterTerms(alpha=0.0, beta=1.0, n_clusters=4), None, tiny_tokenizer)
  assert _norm(g["codebooks"]) > 1e-6
  assert _norm(g["encoder"]) == 0.0


def test_sinkhorn_reassignment_reduces_collisions_on_duplicates(tiny_tokenizer):
  cfg, ds, model, params, _ = tiny_tokenizer
  # 30 distinct items, each 4 times with tiny noise: nearest-code IDs collide in groups of 4.
  base = np.asarray(ds.features["content"][:30])
  noise = 1e-4 * np.random.default_rng(0).normal(size=(120, base.shape[1]))
  feats = (np.repeat(base, 4, axis=0) + noise).astype(np.float32)
  enc = encode_catalogue(params, jnp.asarray(feats), model=model)
  last = model.cfg.levels - 1
  table = assign_catalogue(cfg.tokenizer, enc["codes_NxC"], enc["residuals_NxCxD"][:, last],
                           params["params"]["codebooks"][last], "fp", {})
  before, after = table.stats["before_resolution"], table.stats["after_sinkhorn"]
  assert before["colliding_items"] >= 90, before
  assert after["colliding_items"] < before["colliding_items"] // 2, after
  assert table.stats["final"]["colliding_items"] == 0
  np.testing.assert_array_equal(table.codes_NxC[:, :2].reshape(30, 4, 2)[:, 1:],
                                np.repeat(table.codes_NxC[::4, None, :2], 3, axis=1))


def test_cf_width_must_match_code_width():
  cfg = letter_configs.get_config("tiny")
  cfg.data.synthetic.cf_dim = cfg.tokenizer.code_dim + 1
  ds = load_dataset(cfg.data)
  with pytest.raises(ValueError, match="code_dim"):
    letter.tokenizer_loss(cfg, ds)


def test_letter_tiny_trains_and_decodes(tmp_path):
  cfg = letter_configs.get_config("tiny")
  workdir = str(tmp_path / "letter")
  results = pipeline.train_and_evaluate(cfg, workdir, log=lambda m: None)
  hist = results["tokenizer"]["history"]
  assert np.isfinite(hist["cf"]) and np.isfinite(hist["div"]), hist
  assert results["tokenizer"]["final"]["colliding_items"] == 0
  for split in ("valid", "test"):
    assert results[split]["users"] == 200
    assert 0.0 <= results[split]["recall@5"] <= results[split]["recall@10"] <= 1.0
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  losses = [l["loss"] for l in lines if "loss" in l]
  assert losses[-1] < losses[0]
