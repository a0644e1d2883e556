"""The paper-protocol options (issue 18): gradient accumulation, shared-ID hits,
unconstrained decoding."""
import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.optim import TrainState, optimizer_and_schedule
from jaxrec.recommender import steps
from jaxrec.recommender.t5 import T5
from jaxrec.recommender.t5_layers import T5Config
from jaxrec.xla import jit_init

TINY = T5Config(level_sizes=(6, 5, 4), d_model=16, d_ff=32, heads=2, head_dim=8, enc_layers=1,
                dec_layers=1, dropout=0.0, rel_buckets=8, rel_max_distance=16, user_buckets=7)


def _batch(rng, n_items, b, length=5):
  return {"history_BxL": rng.integers(0, n_items, (b, length)).astype(np.int32),
          "mask_BxL": np.ones((b, length), bool),
          "user_B": rng.integers(0, 50, b).astype(np.int32),
          "target_B": rng.integers(0, n_items, b).astype(np.int32),
          "weight_B": np.ones(b, np.float32)}


def _tiny_t5(b, cfg=TINY, seed=0):
  """(codes, batch of b, T5 params of `cfg`) on 30 random 3-level IDs."""
  rng = np.random.default_rng(seed)
  codes = jnp.asarray(np.array(list(itertools.product(range(6), range(5), range(4))),
                               np.int32)[rng.choice(120, 30, replace=False)])
  batch = _batch(rng, 30, b)
  tok, m = steps.history_tokens(codes, batch["history_BxL"], batch["mask_BxL"], cfg)
  dec_in, _ = steps.decoder_io(codes, batch["target_B"], cfg)
  params = jit_init(T5(cfg), jax.random.key(0), tok, m, batch["user_B"], dec_in)
  return codes, batch, params, (tok, m, batch["user_B"], dec_in)


def test_accumulating_4_steps_of_4_equals_one_step_of_16():
  """optax.MultiSteps under train.accumulate: four micro-batches make the same AdamW update
  (clipping and weight decay included) as their union in one batch; the first three leave
  the parameters unchanged; the schedule advances once per update."""
  codes, batch, params, _ = _tiny_t5(16)
  model = T5(TINY)
  key = jax.random.key(1)

  def run(accumulate, batches):
    tx, lr_at = optimizer_and_schedule(1e-2, 0.1, 8 * accumulate, 0, clip=1.0,
                                       accumulate=accumulate)
    step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx))
    state, seen = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params)), []
    for b in batches:
      state, _ = step(state, b, codes, key)
      seen.append(state.params)
    return state, seen, lr_at

  whole, _, lr1 = run(1, [batch])
  micro = [jax.tree.map(lambda x, i=i: x[4 * i:4 * (i + 1)], batch) for i in range(4)]
  acc, seen, lr4 = run(4, micro)
  for p in seen[:3]:
    chex.assert_trees_all_equal(p, params)
  chex.assert_trees_all_close(acc.params, whole.params, rtol=1e-5, atol=1e-6)
  assert not np.allclose(jax.tree.leaves(whole.params)[0], jax.tree.leaves(params)[0])
  assert [float(lr4(s)) for s in range(8)] == [float(lr1(s // 4)) for s in range(8)]


def test_unconstrained_decoding_is_exact_over_the_code_space_and_names_invalid_ids():
  """`constrained=False` with a beam as wide as all depth-2 prefixes is exhaustive: its W
  best equal the brute-force W best of all K^C sequences; IDs no item has come back as
  item -1 (a miss); the constrained search on the same logits returns catalogue items only."""
  from jaxrec import decode
  k, c, w = 4, 3, 16
  rng = np.random.default_rng(3)
  all_ids = np.array(list(itertools.product(range(k), repeat=c)), np.int32)
  codes = all_ids[rng.choice(len(all_ids), 20, replace=False)]
  a0, a1, a2 = (rng.normal(size=(k,)), rng.normal(size=(k, k)), rng.normal(size=(k, k, k)))
  offsets = (0, k, 2 * k)

  def step_fn(prefix, tokens, level):
    prev = jnp.maximum(level - 1, 0)
    code = tokens - jnp.asarray(offsets)[prev]
    prefix = jnp.where(level > 0, prefix.at[:, prev].set(code), prefix)
    logits = jnp.stack([jnp.broadcast_to(jnp.asarray(a0), (prefix.shape[0], k)),
                        jnp.asarray(a1)[prefix[:, 0]],
                        jnp.asarray(a2)[prefix[:, 0], prefix[:, 1]]])[level]
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), prefix

  tables = decode.prefix_tables(codes)
  run = lambda constrained: decode.beam_search(step_fn, jnp.zeros((w, c), jnp.int32), tables,
                                               (k,) * c, offsets, 3 * k, w, constrained)
  lsm = lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True))
  l0, l1, l2 = lsm(a0), lsm(a1), lsm(a2)
  total = np.array([l0[x] + l1[x, y] + l2[x, y, z] for x, y, z in all_ids])
  item_of = {tuple(r): i for i, r in enumerate(codes.tolist())}

  items, scores = run(False)
  best = np.argsort(-total, kind="stable")[:w]
  np.testing.assert_allclose(np.asarray(scores), total[best], rtol=1e-5)
  want = [item_of.get(tuple(all_ids[b].tolist()), -1) for b in best]
  assert np.asarray(items).tolist() == want and -1 in want
  from jaxrec import metrics
  err = metrics.invalid_id_sums(items[None], scores[None], jnp.ones(1))   # err@K: the -1s
  for kk in (5, 10):
    assert float(err[f"err@{kk}"]) == pytest.approx(np.mean(np.asarray(want[:kk]) < 0))
  items, scores = run(True)
  valid = np.array([all_ids.tolist().index(r) for r in codes.tolist()])
  best = valid[np.argsort(-total[valid], kind="stable")[:w]]
  assert np.asarray(items).tolist() == [item_of[tuple(all_ids[b].tolist())] for b in best]
  np.testing.assert_allclose(np.asarray(scores), total[best], rtol=1e-5)
  err = metrics.invalid_id_sums(items[None], scores[None], jnp.ones(1))
  assert all(float(v) == 0.0 for v in err.values()) and len(err) == 2   # constrained: none


def test_shared_ids_count_the_target_id_as_a_hit():
  """Items 1 and 3 share the ID (1, 0); the search returns that ID once, as item 1 (its first
  item); for target 3 it is a hit at rank 1 (LETTER's test script), and the other IDs rank
  after it; without `shared` the tables refuse the table."""
  from jaxrec import decode, metrics
  codes = np.array([[0, 0], [1, 0], [0, 1], [1, 0], [1, 1]], np.int32)
  with pytest.raises(ValueError, match="unique item IDs"):
    decode.prefix_tables(codes)
  tables = decode.prefix_tables(codes, shared=True)
  assert np.asarray(tables.rep_item_N).tolist() == [0, 1, 2, 1, 4]
  a0 = jnp.array([0.0, 2.0])                           # level 1 prefers code 1
  a1 = jnp.array([[0.0, 1.0], [3.0, 0.0]])             # after 1: code 0

  def step_fn(prefix, tokens, level):
    first = jnp.where(level > 0, tokens, 0)              # (offset of level 1 is 0)
    logits = jnp.where(level == 0, jnp.broadcast_to(a0, (tokens.shape[0], 2)), a1[first])
    return jax.nn.log_softmax(logits, axis=-1), prefix

  items, _ = decode.beam_search(step_fn, jnp.zeros((4, 1)), tables, (2, 2), (0, 2), 4, 4)
  assert np.asarray(items).tolist() == [1, 2, 4, 0]     # log-probs -.18, -2.44, -3.18, -3.44
  for target, hit_at_1 in ((3, 1.0), (1, 1.0), (4, 0.0)):
    sums = metrics.rank_metric_sums(items[None], tables.rep_item_N[jnp.array([target])],
                                    jnp.ones(1))
    assert float(sums["recall@1"]) == hit_at_1, target


def test_loss_selection_keeps_the_lowest_valid_loss(tmp_path):
  """train.select='loss' (LETTER's trainer): each evaluation records the teacher-forced valid
  loss instead of decoding; the kept checkpoint is the one of the lowest; the results still
  carry its decoded valid and test metrics. A model without that loss is refused. The run
  uses LETTER-TIGER's whole-vocabulary head (EOS-terminated targets, EOS scored in the
  beam), which ETEGRec refuses."""
  import json
  import os
  import tiger
  from jaxrec import pipeline
  from jaxrec.config import ConfigError
  cfg = tiger.get_config("tiny")
  cfg.train.select = "loss"
  cfg.train.epochs = 3
  cfg.model.head, cfg.model.extra_vocab = "vocab", 7
  res = pipeline.train_and_evaluate(cfg, str(tmp_path / "w"), log=lambda m: None)
  evals = [json.loads(l) for l in open(tmp_path / "w" / "metrics.jsonl") if '"valid"' in l]
  assert len(evals) == 3 and all("valid_loss" in r and "ndcg@10" not in r for r in evals)
  best = min(evals, key=lambda r: r["valid_loss"])
  assert res["best"]["step"] == best["step"] and res["best"]["valid_loss"] == best["valid_loss"]
  assert 0 <= res["valid"]["ndcg@10"] <= 1 and 0 <= res["test"]["ndcg@10"] <= 1
  import sasrec
  scfg = sasrec.get_config("tiny")
  scfg.train.select = "loss"
  with pytest.raises(ConfigError, match="train.select='loss'"):
    pipeline.train_and_evaluate(scfg, str(tmp_path / "s"), log=lambda m: None)
  assert not os.path.exists(tmp_path / "s" / "checkpoints" / "best")
  import etegrec
  ecfg = etegrec.get_config("tiny")
  ecfg.model.head = "vocab"
  with pytest.raises(ConfigError, match="model.head='vocab': etegrec"):
    pipeline.train_and_evaluate(ecfg, str(tmp_path / "e"), log=lambda m: None)


def test_matrices_decay_rule_spares_norms_and_relative_bias():
  """train.decay='matrices' (HF Trainer's rule): with zero gradients an AdamW step changes
  exactly the decayed leaves, by -lr x wd x value; RMSNorm scales and the relative-attention
  bias tables stay; the cosine ends at lr_end x lr."""
  _, _, params, _ = _tiny_t5(4)
  tx, sched = optimizer_and_schedule(0.1, 0.5, 10, 0, clip=0, decay="matrices", end_frac=0.25)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  flat = jax.tree_util.tree_flatten_with_path(updates)[0]
  spared = {jax.tree_util.keystr(p) for p, u in flat if not np.any(np.asarray(u))}
  assert spared and all("scale" in s or "_rel" in s for s in spared)
  assert any("enc_rel" in s for s in spared) and any("scale" in s for s in spared)
  for (path, u), x in zip(flat, jax.tree.leaves(params)):
    if jax.tree_util.keystr(path) not in spared:
      np.testing.assert_allclose(np.asarray(u), -0.1 * 0.5 * np.asarray(x), rtol=1e-5, atol=1e-7)
  assert float(sched(10)) == pytest.approx(0.025)


def test_etegrec_init_and_unscaled_logits():
  """model.init_std=0.02: every weight but the norm scales drawn N(0, 0.02); logit_scale
  False: the same hidden states give logits sqrt(d) times the scaled ones."""
  import dataclasses
  cfg = dataclasses.replace(TINY, init_std=0.02, d_model=64, d_ff=128)
  _, _, params, inputs = _tiny_t5(4, cfg)
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      assert np.all(np.asarray(x) == 1.0), name
    elif x.size >= 256:
      assert abs(float(np.std(np.asarray(x))) - 0.02) < 0.004, name
  hidden = T5(cfg).apply(params, *inputs)
  scaled = T5(cfg).apply(params, hidden, method=T5.logits)
  raw = T5(dataclasses.replace(cfg, logit_scale=False)).apply(params, hidden, method=T5.logits)
  valid = np.asarray(scaled) > -1e8
  np.testing.assert_allclose(np.asarray(raw)[valid], np.asarray(scaled)[valid] * 8.0, rtol=1e-5)


def test_protocols_doc_matches_the_configs():
  """docs/protocols.md: every row whose `paper` column starts with a backticked literal and
  whose key column names a config key holds that value in the section's paper variant."""
  import ast
  import os
  import re
  from jaxrec.config import get_config, validate_config
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                      "protocols.md")
  variant, checked = None, 0
  for line in open(path):
    head = re.match(r"## .*?`(\w+):(\w+_paper)`", line)
    if head:
      variant = head.groups()
      cfg = get_config(*variant)
      validate_config(cfg)
      continue
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if variant is None or len(cells) != 6:
      continue
    value, key = re.match(r"`([^`]+)`", cells[4]), re.fullmatch(r"`([\w.]+)`", cells[5])
    if not (value and key):
      continue
    node = cfg
    for part in key.group(1).split("."):
      node = node[part]
    assert node == ast.literal_eval(value.group(1)), (variant, key.group(1), node)
    checked += 1
  assert checked >= 40, checked


def test_bfloat16_compute_tracks_float32():
  """train.dtype='bfloat16' (accelerators): parameters and optimizer state stay float32; the
  first three losses agree with float32 to 2 % (bf16 keeps 8 bits of mantissa); decoding
  runs in bf16 and scores its beams within 0.1 nat of float32."""
  import dataclasses
  from jaxrec import decode
  codes, batch, params, inputs = _tiny_t5(16)
  tx, _ = optimizer_and_schedule(1e-2, 0.0, 10, 0, clip=1.0)
  losses = {}
  for dtype in ("float32", "bfloat16"):
    model = T5(dataclasses.replace(TINY, dtype=dtype))
    step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx))
    state, seen = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params)), []
    for _ in range(3):
      state, out = step(state, batch, codes, jax.random.key(0))
      seen.append(float(out["loss"]))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((state.params, state.opt_state))
               if jnp.issubdtype(x.dtype, jnp.floating))
    losses[dtype] = seen
    tables = decode.prefix_tables(np.asarray(codes))
    items, scores = steps.generate(params, *inputs[:3], tables, model=model, beam=10)
    losses[dtype + "_scores"] = np.asarray(scores)
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.02)
  assert losses["bfloat16"] != losses["float32"]                  # (it did compute in bf16)
  assert losses["float32"][2] < losses["float32"][0]
  np.testing.assert_allclose(losses["bfloat16_scores"], losses["float32_scores"], atol=0.1)


def test_constrained_kmeans_keeps_clusters_within_letters_bounds():
  """tokenizer.kmeans_method='constrained' (LETTER's codebook init): on 1,500 points in a
  tight blob plus 500 spread ones, plain k-means leaves clusters of 4 and 500+ points; the
  constrained one keeps every cluster inside LETTER's KMeansConstrained bounds
  [min(N / 2k, 50), 4x that] and returns the clusters' means as centroids."""
  from jaxrec.tokenizer.kmeans import kmeans
  scale = jnp.concatenate([jnp.full((1500, 1), 0.1), jnp.ones((500, 1))])
  x = jax.random.normal(jax.random.key(0), (2000, 8)) * scale
  k = 32
  lo = min(2000 // (2 * k), 50)
  _, plain, _ = kmeans(jax.random.key(1), x, k, 10, "kmeans++")
  assert np.bincount(np.asarray(plain), minlength=k).max() > 4 * lo      # the problem
  cents, assign, inertia = kmeans(jax.random.key(1), x, k, 10, "constrained")
  counts = np.bincount(np.asarray(assign), minlength=k)
  assert counts.min() >= lo and counts.max() <= 4 * lo, counts
  means = np.stack([np.asarray(x)[np.asarray(assign) == c].mean(0) for c in range(k)])
  np.testing.assert_allclose(np.asarray(cents), means, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(float(inertia), float(jnp.sum((x - cents[assign]) ** 2)), rtol=1e-5)


def test_each_init_level_starts_from_the_nearest_codes_residual():
  """k-means codebooks level by level (every tokenizer's init, RQ-KMeans): the next level is
  fit on each point's residual to its nearest centroid, as LETTER's and ETEGRec's code
  quantize after initialising a level; with `constrained` (balanced clusters) that is not
  the cluster the point was assigned to."""
  from jaxrec.tokenizer.kmeans import kmeans
  from jaxrec.tokenizer.train import kmeans_codebooks
  scale = jnp.concatenate([jnp.full((300, 1), 0.1), jnp.ones((100, 1))])
  x = jax.random.normal(jax.random.key(0), (400, 6)) * scale
  key = jax.random.key(3)
  books = kmeans_codebooks(key, x, 2, 16, 5, "constrained")
  first, assign, _ = kmeans(jax.random.fold_in(key, 0), x, 16, 5, "constrained")
  near = jnp.argmin(jnp.sum((x[:, None] - first[None]) ** 2, -1), -1)
  assert int(jnp.sum(near != assign)) > 0                      # the case that matters
  second, _, _ = kmeans(jax.random.fold_in(key, 1), x - first[near], 16, 5, "constrained")
  chex.assert_trees_all_close(books, jnp.stack([first, second]), rtol=1e-5, atol=1e-6)
