"""Constrained beam search: known answers, brute force, constraints, KV cache."""
import dataclasses
import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import decode, metrics
from jaxrec.config import config_problems, get_config
from jaxrec.recommender import steps
from jaxrec.recommender.t5 import T5
from jaxrec.recommender.t5_layers import T5Config
from jaxrec.xla import jit_init

K, C = 4, 3
OFFSETS = (0, K, 2 * K)
BOS = C * K


def _catalogue(n=20, seed=0):
  rng = np.random.default_rng(seed)
  all_ids = np.array(list(itertools.product(range(K), repeat=C)), np.int32)
  return all_ids[rng.choice(len(all_ids), n, replace=False)]


def _table_step(tables_per_level):
  """A stub model: logits at level l are a fixed table indexed by the prefix so far.
  The state is the prefix [W, C]; the fed token tells the code chosen at level - 1."""
  a0, a1, a2 = tables_per_level

  def step_fn(prefix, tokens, level):
    prev = level - 1
    code = tokens - jnp.asarray(OFFSETS)[jnp.maximum(prev, 0)]
    prefix = jnp.where(level > 0, prefix.at[:, jnp.maximum(prev, 0)].set(code), prefix)
    logits = jnp.stack([
        jnp.broadcast_to(a0, (prefix.shape[0], K)),
        a1[prefix[:, 0]],
        a2[prefix[:, 0], prefix[:, 1]],
    ])[level]
    return jax.nn.log_softmax(logits, axis=-1), prefix

  return step_fn


def _brute_force(codes, tables_per_level):
  a0, a1, a2 = (np.asarray(jax.nn.log_softmax(t, -1)) for t in tables_per_level)
  s = a0[codes[:, 0]] + a1[codes[:, 0], codes[:, 1]] + a2[codes[:, 0], codes[:, 1], codes[:, 2]]
  order = np.argsort(-s, kind="stable")
  return order, s[order]


def _run(codes, tables_per_level, beam):
  tables = decode.prefix_tables(codes)
  fn = jax.jit(functools.partial(decode.beam_search, _table_step(tables_per_level),
                                 level_sizes=(K,) * C, offsets=OFFSETS, bos=BOS, beam=beam))
  return fn(jnp.zeros((beam, C), jnp.int32), tables)


def test_prefix_tables_enumerate_exactly_the_catalogue():
  codes = _catalogue()
  t = jax.device_get(decode.prefix_tables(codes))
  found = []

  def walk(level, node, prefix):
    if level == C:
      found.append((tuple(prefix), int(t.leaf_item_N[node])))
      return
    for child in range(t.child_start_CxN1[level, node], t.child_start_CxN1[level, node + 1]):
      walk(level + 1, child, prefix + [int(t.child_code_CxN[level, child])])

  walk(0, 0, [])
  assert len(found) == len(codes)
  for prefix, item in found:
    assert tuple(codes[item]) == prefix


def test_matches_brute_force_enumeration():
  codes = _catalogue()
  keys = jax.random.split(jax.random.key(0), 3)
  logit_tables = [jax.random.normal(keys[0], (K,)) * 2, jax.random.normal(keys[1], (K, K)) * 2,
                  jax.random.normal(keys[2], (K, K, K)) * 2]
  # a beam as wide as the catalogue keeps every prefix: beam search is then exact
  items, scores = _run(codes, logit_tables, beam=len(codes))
  order, best = _brute_force(codes, logit_tables)
  np.testing.assert_array_equal(np.asarray(items), order)
  np.testing.assert_allclose(np.asarray(scores), best, rtol=1e-5, atol=1e-5)


def test_known_best_sequence_with_narrow_beam():
  codes = _catalogue()
  target = codes[7]
  a0 = jnp.zeros(K).at[target[0]].set(5.0)
  a1 = jnp.zeros((K, K)).at[target[0], target[1]].set(5.0)
  a2 = jnp.zeros((K, K, K)).at[target[0], target[1], target[2]].set(5.0)
  items, scores = _run(codes, [a0, a1, a2], beam=3)
  assert int(items[0]) == 7
  assert np.all(np.diff(np.asarray(scores)) <= 1e-6)  # best first


def test_constraint_holds_when_logits_favour_invalid_codes():
  all_ids = np.array(list(itertools.product(range(K), repeat=C)), np.int32)
  codes = all_ids[(all_ids != 0).all(1)][:10]  # no valid ID uses code 0 anywhere
  big = lambda shape: jnp.zeros(shape).at[..., 0].set(50.0)  # ...but code 0 wins every logit
  items, scores = _run(codes, [big((K,)), big((K, K)), big((K, K, K))], beam=16)
  items = np.asarray(items)
  valid = items[items >= 0]
  assert len(valid) == 10 and len(set(valid.tolist())) == 10  # all real, no duplicates
  assert (items[10:] == -1).all() and np.isinf(np.asarray(scores)[10:]).all()
  assert np.isfinite(np.asarray(scores)[:10]).all()


TINY = T5Config(level_sizes=(6, 5, 4), d_model=16, d_ff=32, heads=2, head_dim=8, enc_layers=1,
                dec_layers=2, dropout=0.0, rel_buckets=8, rel_max_distance=16, user_buckets=7)


# LETTER-TIGER's head: one softmax over the whole table (5 extra rows), EOS-terminated
TINY_VOCAB = dataclasses.replace(TINY, head="vocab", extra_vocab=5)
# one encoder position per history item, the sum of its codes' rows
TINY_SUM = dataclasses.replace(TINY, item_tokens="sum")
# one softmax over the catalogue after BOS, an item's vector its codes' rows summed
TINY_ITEMS = dataclasses.replace(TINY, head="items")


@functools.lru_cache(maxsize=None)
def _tiny_model(cfg: T5Config):
  """A tiny T5 of `cfg`, 30 items' IDs, 5 users' histories (built once per config)."""
  rng = np.random.default_rng(1)
  all_ids = np.array(list(itertools.product(range(6), range(5), range(4))), np.int32)
  codes = all_ids[rng.choice(len(all_ids), 30, replace=False)]
  model = T5(cfg)
  hist = rng.integers(0, 30, (5, 3)).astype(np.int32)
  mask = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]], bool)
  tok, m = steps.history_tokens(jnp.asarray(codes), hist, mask, cfg)
  dec_in, _ = steps.decoder_io(jnp.asarray(codes), jnp.arange(5), cfg)
  params = jit_init(model, jax.random.key(0), tok, m, jnp.arange(5), dec_in)
  return model, params, codes, tok, m


def _teacher_forced_scores(model, params, codes, tok, m, users, b, ids, positions=False):
  """Sum over decoder positions of log p(label), user b, the IDs of items `ids` (with
  `positions`: each position's term, [len(ids), positions])."""
  rep = lambda x: jnp.repeat(x[b:b + 1], len(ids), axis=0)
  dec_in, labels = steps.decoder_io(jnp.asarray(codes), jnp.asarray(ids), model.cfg)

  @jax.jit
  def total(params, tok, m, users, dec_in, labels):
    hidden = model.apply(params, tok, m, users, dec_in)
    logp = jax.nn.log_softmax(model.apply(params, hidden, method=T5.logits), -1)
    return jnp.take_along_axis(logp, labels[..., None], -1)[..., 0]

  terms = np.asarray(total(params, rep(tok), rep(m), rep(users), dec_in, labels))
  return terms if positions else terms.sum(-1)


@pytest.mark.parametrize("cfg", [TINY, TINY_VOCAB, TINY_SUM], ids=["level", "vocab", "sum"])
def test_beam_scores_equal_teacher_forced_log_probs(cfg):
  """The KV-cached, beam-folded decoder must score a sequence exactly as the
  teacher-forced decoder does (with the "vocab" head: every position's softmax over the
  whole table, EOS's term included). Beam 1 too: there every cached position, BOS's
  included, has one row."""
  model, params, codes, tok, m = _tiny_model(cfg)
  users = jnp.arange(5)
  for beam in (8, 1):
    items, scores = steps.generate(params, tok, m, users, decode.prefix_tables(codes),
                                    model=model, beam=beam)
    assert (np.asarray(items) >= 0).all()
    for b in range(5):
      ids = np.asarray(items[b])
      assert len(set(ids.tolist())) == beam
      total = _teacher_forced_scores(model, params, codes, tok, m, users, b, ids)
      np.testing.assert_allclose(np.asarray(scores[b]), total, rtol=1e-4, atol=1e-4)


def test_vocab_head_ranks_every_item_by_its_full_score():
  """With a beam as wide as the catalogue the search is exact: the "vocab" head returns all
  30 items in the order of their teacher-forced scores, EOS's term included (which is what
  the final re-ranking is for: without it the order would be the scores less EOS's)."""
  rng = np.random.default_rng(1)
  all_ids = np.array(list(itertools.product(range(6), range(5), range(4))), np.int32)
  codes = all_ids[rng.choice(len(all_ids), 30, replace=False)]
  model = T5(TINY_VOCAB)
  hist, mask = np.array([[3, 7, 0]], np.int32), np.array([[1, 1, 0]], bool)
  tok, m = steps.history_tokens(jnp.asarray(codes), hist, mask, TINY_VOCAB)
  dec_in, _ = steps.decoder_io(jnp.asarray(codes), jnp.arange(1), TINY_VOCAB)
  params = jit_init(model, jax.random.key(3), tok, m, jnp.arange(1), dec_in)
  # scale up the EOS row so that its term reorders the items
  params["params"]["embed"] = params["params"]["embed"].at[TINY_VOCAB.eos].mul(4.0)
  items, scores = steps.generate(params, tok, m, jnp.arange(1), decode.prefix_tables(codes),
                                  model=model, beam=30)
  terms = _teacher_forced_scores(model, params, codes, tok, m, jnp.arange(1), 0, np.arange(30),
                                 positions=True)
  total = terms.sum(-1)
  order = np.argsort(-total, kind="stable")
  np.testing.assert_array_equal(np.asarray(items[0]), order)
  np.testing.assert_allclose(np.asarray(scores[0]), total[order], rtol=1e-4, atol=1e-4)
  # the EOS term matters here: ranking by the codes' terms alone gives another order
  codes_only = terms[:, :-1].sum(-1)
  assert not np.array_equal(np.argsort(-codes_only, kind="stable"), order)


def test_vocab_head_inputs_end_with_eos():
  """The "vocab" head: the encoder input is the history's codes then EOS right after the
  last real code (left-aligned histories), the decoder reads [BOS, c_0 .. c_{C-1}] and the
  labels are the codes' rows then EOS."""
  codes = jnp.array([[0, 1, 2], [5, 4, 3], [1, 1, 1]], jnp.int32)
  off = np.asarray(TINY_VOCAB.offsets)
  eos, bos = TINY_VOCAB.eos, TINY_VOCAB.bos
  assert (bos, eos, TINY_VOCAB.vocab_size) == (15, 16, 22)     # 6 + 5 + 4 codes, BOS, EOS, 5
  tok, m = steps.history_tokens(codes, jnp.array([[1, 2], [2, 0]]), jnp.array([[1, 1], [1, 0]],
                                                                                bool), TINY_VOCAB)
  row = lambda i: (np.asarray(codes[i]) + off).tolist()
  real = np.where(np.asarray(m), np.asarray(tok), -1).tolist()    # padding's rows: -1
  assert real == [row(1) + row(2) + [eos], row(2) + [eos] + [-1] * 3]
  assert np.asarray(m).tolist() == [[True] * 7, [True] * 4 + [False] * 3]
  dec_in, labels = steps.decoder_io(codes, jnp.array([1]), TINY_VOCAB)
  assert np.asarray(dec_in).tolist() == [[bos] + row(1)]
  assert np.asarray(labels).tolist() == [row(1) + [eos]]


def test_item_sum_tokens_are_one_position_per_item():
  """item_tokens='sum': the encoder reads one position per history item, the sum of its
  codes' rows, masked as the items are."""
  model, params, codes, tok, m = _tiny_model(TINY_SUM)
  assert tok.shape == (5, 3, 3) and m.shape == (5, 3)
  # each item's rows: its codes at the levels' offsets
  assert {tuple(r) for r in np.asarray(tok).reshape(-1, 3)} <= {
      tuple(r) for r in codes + np.asarray(TINY_SUM.offsets)}
  enc, enc_mask = model.apply(params, tok, m, jnp.arange(5), method=T5.encode)
  x = params["params"]["embed"][tok].sum(2)
  want, want_mask = model.apply(params, x, m, jnp.arange(5), method=T5.encode_inputs)
  chex.assert_trees_all_close(enc, want, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(enc_mask)[:, 1:], m)  # after the user token
  cfg = get_config("tiger", "tiny")
  cfg.model.item_tokens, cfg.model.head = "sum", "vocab"
  assert config_problems(cfg) == ["model.item_tokens='sum' reads no EOS token: use it with "
                                  "model.head='level'"]
  cfg.model.item_tokens, cfg.model.head = "items", "level"
  assert config_problems(cfg) == ["model.item_tokens='items': must be one of 'codes', 'sum'"]


def test_items_head_ranks_the_catalogue_by_its_summed_code_vectors():
  """head='items': the decoder reads BOS alone; every item's logit is that state (times
  d^-0.5) against the sum of its codes' rows of the tied table; training reads the same
  logits, and evaluation is the full ranking of their softmax, scored against the target
  item itself."""
  model, params, codes, _, _ = _tiny_model(TINY_ITEMS)
  rng = np.random.default_rng(4)
  hist = rng.integers(0, 30, (6, 3)).astype(np.int32)
  mask = np.arange(3)[None, :] < rng.integers(1, 4, 6)[:, None]
  batch = {"history_BxL": hist, "mask_BxL": mask, "user_B": np.arange(6, dtype=np.int32),
           "target_B": rng.integers(0, 30, 6).astype(np.int32),
           "weight_B": np.array([1, 1, 1, 1, 1, 0], np.float32)}
  tok, m = steps.history_tokens(jnp.asarray(codes), hist, mask, TINY_ITEMS)
  enc, enc_mask = model.apply(params, tok, m, batch["user_B"], method=T5.encode)
  bos = jnp.full((6, 1), TINY_ITEMS.bos, jnp.int32)
  h = model.apply(params, enc, enc_mask, bos, method=T5.decode)[:, 0]
  embed = np.asarray(params["params"]["embed"])
  table = sum(embed[codes[:, l] + TINY_ITEMS.offsets[l]] for l in range(3))
  want = np.asarray(h) * 16 ** -0.5 @ table.T                                  # [6, 30]
  logits, labels = steps.forward(params, model, batch, jnp.asarray(codes), False)
  chex.assert_shape(logits, (6, 1, 30))
  np.testing.assert_allclose(np.asarray(logits[:, 0]), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(labels[:, 0]), batch["target_B"])
  sums, items = steps.eval_step(params, batch, jnp.asarray(codes), decode.prefix_tables(codes),
                                model=model, beam=30)
  order = np.argsort(-want, axis=1, kind="stable")
  np.testing.assert_array_equal(np.asarray(items), order)
  expect = metrics.rank_metrics_np(order[:5], batch["target_B"][:5])    # user 5 weighs 0
  got = metrics.finalize(jax.device_get(sums))
  chex.assert_trees_all_close({k: got[k] for k in expect}, expect, atol=1e-6)
  assert got["err@10"] == 0.0
  heads = ("level", "vocab", "items")                                  # TIGER's
  cfg = get_config("tiger", "tiny")
  cfg.model.head = "items"
  assert config_problems(cfg, heads=heads) == []
  cfg.train.decode = "free"
  assert config_problems(cfg, heads=heads) == [
      "model.head='items' ranks the catalogue's items: it decodes no IDs, so train.decode="
      "'free' does not apply"]
  cfg = get_config("letter", "tiny")
  cfg.model.head = "items"
  assert config_problems(cfg, heads=("level", "vocab"))[0].startswith(
      "model.head='items': letter has no such head")


def test_decoder_is_causal():
  """Gradient of decoder position t w.r.t. the embeddings fed at later positions is zero."""
  model, params, codes, tok, m = _tiny_model(TINY)
  dec_in = jnp.array([[TINY.bos, 2, 6 + 3]])  # distinct rows, unused by the encoder input below
  enc_tok = jnp.full((1, 3), 20, jnp.int32)
  enc_mask = jnp.ones((1, 3), bool)
  # d (sum of position t's state) / d embedding rows, every t at once: [3, V, D]
  jac = jax.jit(jax.jacrev(lambda p: model.apply(p, enc_tok, enc_mask, jnp.zeros(1, jnp.int32),
                                                 dec_in)[0].sum(-1)))(params)
  for t in range(3):
    g = jac["params"]["embed"][t]
    for later in range(t + 1, 3):
      chex.assert_trees_all_equal(g[dec_in[0, later]], jnp.zeros(TINY.d_model))
    assert float(jnp.abs(g[dec_in[0, t]]).sum()) > 0


def test_absorbed_cross_attention_equals_the_cached_form():
  """The teacher-forced cross-attention (key/value projections moved to the query side)
  equals attention over projected keys/values: values and every gradient, in training
  (the same dropout masks) and in evaluation; `matmul`'s weight gradient is autodiff's."""
  from jaxrec.recommender import t5_layers as t5lib
  cfg = dataclasses.replace(TINY, dropout=0.3)
  attn = t5lib.Attention(cfg)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 4, 16)), jnp.float32)       # [B, Q, D]
  enc = jnp.asarray(rng.normal(size=(3, 7, 16)), jnp.float32)     # [B, K, D]
  bias = jnp.where(jnp.arange(7)[None, None, None, :] < jnp.array([7, 5, 2])[:, None, None, None],
                   0.0, t5lib.NEG)
  params = jit_init(attn, jax.random.key(0), x, enc, bias, train=False, method="attend_absorbed")

  @functools.partial(jax.jit, static_argnums=3)
  def both(params, x, enc, train):
    rngs = {"dropout": jax.random.key(1)}
    absorbed = lambda p, x, e: attn.apply(p, x, e, bias, train, rngs=rngs,
                                          method="attend_absorbed").sum(-1)
    cached = lambda p, x, e: attn.apply(p, x, attn.apply(p, e, method="kv"), bias, train,
                                        rngs=rngs).sum(-1)
    return [(f(params, x, enc), jax.jacrev(lambda *a: f(*a).sum(), (0, 1, 2))(params, x, enc))
            for f in (absorbed, cached)]

  for train in (False, True):
    a, c = both(params, x, enc, train)
    chex.assert_trees_all_close(a, c, rtol=1e-5, atol=1e-5)
  a_out, _ = both(params, x, enc, True)[0]
  assert float(jnp.abs(a_out - both(params, x, enc, False)[0][0]).max()) > 1e-3  # dropout acts
  for xx, w in ((x, rng.normal(size=(16, 5))), (x[..., :3], rng.normal(size=(3, 8)))):  # x wider / narrower than dy
    grads = lambda mm: jax.grad(lambda a, b: jnp.sum(jnp.sin(mm(a, b))), (0, 1))(xx, jnp.asarray(w, jnp.float32))
    chex.assert_trees_all_close(grads(t5lib.matmul), grads(jnp.dot), rtol=1e-5, atol=1e-5)
