"""Residual quantization, Sinkhorn, k-means, collisions, code tables, tokenizer fit."""
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxrec.fingerprint import fingerprint
from jaxrec.tokenizer import codes as codes_lib
from jaxrec.tokenizer.build import build_code_table, write_outputs
from jaxrec.tokenizer.kmeans import inertia, kmeans, reseed_dead_codes
from jaxrec.tokenizer.rq import residual_quantize, sinkhorn_log
from jaxrec.data import from_sequences


def _books(key, levels=3, k=8, d=4, decay=0.1):
  """Codebooks whose scales shrink level by level, so greedy residual coding is exact."""
  keys = jax.random.split(key, levels)
  return jnp.stack([jax.random.normal(keys[l], (k, d)) * decay ** l for l in range(levels)])


class ResidualQuantizeTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_straight_through_gradient_is_identity(self):
    books = _books(jax.random.key(0))
    z = jax.random.normal(jax.random.key(1), (5, 4))
    w = jax.random.normal(jax.random.key(2), (5, 4))

    @self.variant
    def f(z):
      out = residual_quantize(z, books, modes=("hard",) * 3, train=True)
      return jnp.sum(out.quantized_BxD * w)

    chex.assert_trees_all_close(jax.grad(f)(z), w, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_quantized_is_sum_of_chosen_codes_and_sums_round_trip(self):
    books = _books(jax.random.key(3))
    codes = jax.random.randint(jax.random.key(4), (16, 3), 0, 8)
    z = sum(books[l][codes[:, l]] for l in range(3))
    out = self.variant(lambda z: residual_quantize(z, books, modes=("hard",) * 3, train=False))(z)
    chex.assert_trees_all_equal(out.codes_BxC, codes.astype(jnp.int32))
    chosen = sum(books[l][out.codes_BxC[:, l]] for l in range(3))
    chex.assert_trees_all_close(out.quantized_BxD, chosen, atol=1e-5)
    chex.assert_shape(out.dist_BxCxK, (16, 3, 8))
    chex.assert_shape(out.residuals_BxCxD, (16, 3, 4))
    # round trip: zero quantization error
    chex.assert_trees_all_close(out.quantized_BxD, z, atol=1e-5)

  def test_stop_gradient_between_levels(self):
    """'stop' (official code): only level 1's commitment reaches z; 'through': all do."""
    books = _books(jax.random.key(5))
    z = jax.random.normal(jax.random.key(6), (6, 4))

    def commit_grad(mode):
      return jax.grad(lambda z: residual_quantize(z, books, modes=("hard",) * 3, train=True,
                                                  residual_grad=mode, level_reduce="sum").commit_loss)(z)

    def level1_grad(z):
      e = books[0][jnp.argmin(codes_lib.squared_distances(z, books[0]), -1)]
      return jax.grad(lambda z: jnp.mean(jnp.square(z - e)))(z)

    chex.assert_trees_all_close(commit_grad("stop"), level1_grad(z), atol=1e-6)
    assert not np.allclose(commit_grad("through"), level1_grad(z), atol=1e-4)

  def test_gumbel_soft_in_training_hard_at_inference(self):
    books = _books(jax.random.key(7), levels=2)
    z = jax.random.normal(jax.random.key(8), (4, 4))
    soft = residual_quantize(z, books, modes=("gumbel", "gumbel"), train=True, key=jax.random.key(0))
    hard = residual_quantize(z, books, modes=("gumbel", "gumbel"), train=False)
    hard_sum = sum(books[l][hard.codes_BxC[:, l]] for l in range(2))
    chex.assert_trees_all_close(hard.quantized_BxD, hard_sum, atol=1e-5)
    assert not np.allclose(soft.quantized_BxD, hard_sum)
    g = jax.grad(lambda b: jnp.sum(residual_quantize(z, b, modes=("gumbel", "gumbel"), train=True,
                                                     key=jax.random.key(0)).quantized_BxD))(books)
    assert float(jnp.abs(g).sum()) > 0  # the mixture is differentiable w.r.t. the codebooks


class SinkhornTest(chex.TestCase):

  def test_balanced_on_uniform_case(self):
    cost = jax.random.uniform(jax.random.key(0), (64, 16))
    codes = jnp.argmax(sinkhorn_log(cost, 0.003, 200), axis=-1)
    counts = np.bincount(np.asarray(codes), minlength=16)
    assert counts.max() - counts.min() <= 1, counts
    nearest = np.bincount(np.asarray(jnp.argmin(cost, -1)), minlength=16)
    assert nearest.max() - nearest.min() > 1  # the plain argmin is not balanced

  def test_tiny_epsilon_is_finite(self):
    cost = jax.random.uniform(jax.random.key(1), (32, 8)) * 100.0
    for eps in (1e-3, 1e-6, 1e-9):
      lq = sinkhorn_log(cost, eps, 50)
      assert np.isfinite(np.asarray(jnp.max(lq, -1))).all()
      assert np.isfinite(np.asarray(jax.nn.logsumexp(lq))).all()

  def test_sinkhorn_mode_in_training_only(self):
    books = _books(jax.random.key(2), levels=1, k=4)
    z = jnp.tile(books[0][:1], (8, 1)) + 0.01 * jax.random.normal(jax.random.key(3), (8, 4))
    train = residual_quantize(z, books, modes=("sinkhorn",), train=True)
    infer = residual_quantize(z, books, modes=("sinkhorn",), train=False)
    assert len(np.unique(np.asarray(infer.codes_BxC))) == 1  # all nearest to code 0
    assert len(np.unique(np.asarray(train.codes_BxC))) == 4  # balanced over 4 codes


def test_kmeans_lowers_inertia_and_is_deterministic():
  x = jax.random.normal(jax.random.key(0), (300, 5)) + jnp.repeat(
      jax.random.normal(jax.random.key(1), (6, 5)) * 4, 50, axis=0)
  c0, _, i0 = kmeans(jax.random.key(2), x, 6, iters=0)
  c1, a1, i1 = kmeans(jax.random.key(2), x, 6, iters=20)
  c1b, _, _ = kmeans(jax.random.key(2), x, 6, iters=20)
  assert float(i1) < float(i0)
  chex.assert_trees_all_close(i1, inertia(x, c1), rtol=1e-5)
  chex.assert_trees_all_equal(c1, c1b)
  _, _, ir = kmeans(jax.random.key(2), x, 6, iters=20, init="random")
  assert np.isfinite(float(ir))


def test_reseed_revives_dead_codes():
  x = jax.random.normal(jax.random.key(0), (100, 3))
  book = jnp.concatenate([x[:4], jnp.full((4, 3), 100.0)])  # codes 4..7 are far away: dead
  counts = jnp.bincount(jnp.argmin(codes_lib.squared_distances(x, book), -1), length=8)
  assert (np.asarray(counts[4:]) == 0).all()
  new, n = reseed_dead_codes(jax.random.key(1), book, x, counts)
  assert int(n) == 4
  chex.assert_trees_all_equal(new[:4], book[:4])
  counts2 = jnp.bincount(jnp.argmin(codes_lib.squared_distances(x, new), -1), length=8)
  assert (np.asarray(counts2[4:]) > 0).any()


def test_health_on_hand_case():
  codes = jnp.array([[0, 1], [0, 1], [1, 0], [2, 3], [0, 1]], jnp.int32)
  h = codes_lib.health_dict(codes, (4, 4))
  assert h["used"] == [3, 3]
  assert h["colliding_items"] == 3 and h["largest_group"] == 3 and h["distinct_ids"] == 3
  assert h["collision_rate"] == pytest.approx(0.6)
  p = np.array([3, 1, 1]) / 5
  assert h["perplexity"][0] == pytest.approx(np.exp(-(p * np.log(p)).sum()), abs=0.01)


def test_suffix_makes_ids_unique_and_keeps_prefixes():
  codes = np.array([[0, 1], [2, 2], [0, 1], [3, 0], [0, 1], [2, 2]], np.int32)
  out = codes_lib.append_suffix(codes, 4)
  np.testing.assert_array_equal(out[:, :2], codes)
  np.testing.assert_array_equal(out[:, 2], [0, 0, 1, 0, 2, 1])  # rank by item id within group
  assert len(np.unique(out, axis=0)) == len(out)
  with pytest.raises(ValueError, match="3 items share one semantic ID, more than the collision level's size 2"):
    codes_lib.append_suffix(codes, 2)


def test_sinkhorn_resolution_reduces_collisions():
  k, d = 16, 4
  book = jax.random.normal(jax.random.key(0), (k, d))
  # 12 items in 3 groups whose last-level residuals sit near one code each
  residual = jnp.repeat(book[:3], 4, axis=0) + 0.3 * jax.random.normal(jax.random.key(1), (12, d))
  codes = np.stack([np.repeat([0, 1, 2], 4), np.repeat([0, 1, 2], 4)], 1).astype(np.int32)
  before = codes_lib.health_dict(codes, (k, k))["colliding_items"]
  new, rounds = codes_lib.resolve_sinkhorn(codes, residual, book, rounds=20)
  after = codes_lib.health_dict(new, (k, k))["colliding_items"]
  assert before == 12 and after < before, (before, after)
  np.testing.assert_array_equal(new[:, 0], codes[:, 0])  # only the last level moves


def test_code_table_save_load_bit_identical(tmp_path):
  codes = np.array([[1, 2, 0], [3, 4, 0]], np.int32)
  t = codes_lib.CodeTable(codes, (8, 8, 4), {"a": 1}, fingerprint(codes, {"x": 1}))
  t.save(str(tmp_path))
  r = codes_lib.CodeTable.load(str(tmp_path))
  assert r.fingerprint == t.fingerprint and r.sizes == t.sizes and r.stats == {"a": 1}
  assert r.codes_NxC.tobytes() == codes.tobytes() and r.codes_NxC.dtype == np.int32
  t.write_index_json(str(tmp_path / "x.index.json"))
  from jaxrec.data.readers import read_index_json
  back, _ = read_index_json(str(tmp_path / "x.index.json"), 2)
  np.testing.assert_array_equal(back, codes)


def test_code_table_from_flag_reads_a_workdir_or_a_named_table(tmp_path):
  from jaxrec.errors import ConfigError
  start = np.array([[1, 2, 0], [3, 4, 0]], np.int32)
  final = np.array([[1, 5, 0], [3, 4, 0]], np.int32)
  codes_lib.CodeTable(start, (8, 8, 4), {}, "s").save(str(tmp_path))
  codes_lib.CodeTable(final, (8, 8, 4), {}, "f").save(str(tmp_path), "codes_final")
  np.testing.assert_array_equal(
      codes_lib.CodeTable.from_flag(str(tmp_path), "flag", 2).codes_NxC, start)
  np.testing.assert_array_equal(codes_lib.CodeTable.from_flag(
      str(tmp_path / "codes_final.npz"), "flag", 2).codes_NxC, final)
  with pytest.raises(ConfigError, match="flag=.*no nope.npz there"):
    codes_lib.CodeTable.from_flag(str(tmp_path / "nope.npz"), "flag", 2)
  with pytest.raises(ConfigError, match="codes_final.npz codes 2 items, the data set has 3"):
    codes_lib.CodeTable.from_flag(str(tmp_path / "codes_final.npz"), "flag", 3)


def _tiny_tok_cfg(**kw):
  base = dict(source="rqvae", feature="f", hidden=(16,), code_dim=4, levels=2, codebook_size=8,
              modes=("hard", "sinkhorn"), dropout=0.0, beta=0.25, level_reduce="mean",
              residual_grad="stop", gumbel_tau=1.0, sinkhorn_eps=0.003, sinkhorn_iters=20,
              kmeans_init=True, kmeans_method="kmeans++", kmeans_iters=5, reseed_every=2,
              epochs=4, batch_size=32, lr=1e-3, weight_decay=1e-4, warmup_epochs=1,
              schedule="constant", clip=1.0, log_every=2, collision="sinkhorn", suffix_size=8,
              sinkhorn_rounds=5, shared_ids=False)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def test_fit_same_key_same_codes_and_workdir_reuse(tmp_path):
  feats = np.asarray(jax.random.normal(jax.random.key(0), (50, 6)), np.float32)
  ds = from_sequences("t", [[0, 1, 2]], 50, features={"f": feats})
  cfg = _tiny_tok_cfg()
  a, tok = build_code_table(cfg, ds, jax.random.key(1), seed=1)
  b, _ = build_code_table(cfg, ds, jax.random.key(1), seed=1)
  assert tok is not None
  np.testing.assert_array_equal(a.codes_NxC, b.codes_NxC)
  assert a.fingerprint == b.fingerprint
  assert len(np.unique(a.codes_NxC, axis=0)) == 50  # unique after resolution
  a.save(str(tmp_path))
  c, tok_c = build_code_table(cfg, ds, jax.random.key(1), seed=1, workdir=str(tmp_path))
  assert tok_c is None and c.codes_NxC.tobytes() == a.codes_NxC.tobytes()
  d, _ = build_code_table(_tiny_tok_cfg(epochs=3), ds, jax.random.key(1), seed=1,
                          workdir=str(tmp_path))
  assert d.fingerprint != a.fingerprint  # a config change is a different table


def test_first_batch_kmeans_init_reads_only_the_fits_first_batch():
  """tokenizer.kmeans_sample='first_batch' (ETEGRec's pre-training, RQVAE/models/vq.py:69-70):
  the codebooks start from k-means on the encodings of the fit's first batch alone, so the
  items outside it do not move them; the whole catalogue's init differs."""
  from jaxrec.tokenizer import train as tok_train
  from jaxrec.tokenizer.rqvae import RQVAE, RQVAEConfig
  feats = np.asarray(jax.random.normal(jax.random.key(0), (50, 6)), np.float32)
  arch = RQVAEConfig(in_dim=6, hidden=(16,), code_dim=4, levels=2, codebook_size=8,
                     modes=("hard", "hard"))
  cfg = _tiny_tok_cfg(epochs=0, batch_size=16, kmeans_sample="first_batch")
  key = jax.random.key(4)
  _, params, _ = tok_train.fit(cfg, arch, feats, key)
  k_init, k_km, k_train, _ = jax.random.split(key, 4)
  k_perm, _ = tok_train.fit_streams(k_train)
  first = np.asarray(tok_train.epoch_batches(jax.random.fold_in(k_perm, 0), 50, 16)[0])
  rest = np.setdiff1d(np.arange(50), first)
  moved = feats.copy()
  moved[rest] *= 10.0                                          # not in the first batch
  _, params_moved, _ = tok_train.fit(cfg, arch, moved, key)
  books = params["params"]["codebooks"]
  chex.assert_trees_all_close(books, params_moved["params"]["codebooks"], rtol=1e-6)
  model = RQVAE(arch)
  init = tok_train.jit_init(model, {"params": k_init}, jnp.asarray(feats[:2]), train=False)
  want = tok_train.kmeans_init(init, jnp.asarray(feats[first]), k_km, model, 5, "kmeans++")
  chex.assert_trees_all_close(books, want["params"]["codebooks"], rtol=1e-6)
  _, whole, _ = tok_train.fit(_tiny_tok_cfg(epochs=0, batch_size=16), arch, feats, key)
  assert not np.allclose(np.asarray(books), np.asarray(whole["params"]["codebooks"]))


def test_a_short_last_batch_sees_every_item_once_and_is_one_more_step():
  """tokenizer.last_batch='short' (LETTER's and ETEGRec's DataLoader without drop_last):
  an epoch of 50 items in batches of 16 is 3 full batches and one of 2, every item once;
  the epoch equals the full batches' scan followed by a step on the 2 items, its metrics
  the mean over the 4 steps; 'wrap' fills the last batch from the permutation's start."""
  from jaxrec.tokenizer import train as tok_train
  from jaxrec.tokenizer.rqvae import RQVAE, RQVAEConfig
  from jaxrec.optim import TrainState, make_optimizer
  key = jax.random.key(5)
  full, tail = tok_train.epoch_plan(key, 50, 16, "short")
  assert full.shape == (3, 16) and tail.shape == (2,)
  assert sorted(np.concatenate([np.ravel(full), tail]).tolist()) == list(range(50))
  wrapped, none = tok_train.epoch_plan(key, 50, 16, "wrap")
  assert wrapped.shape == (4, 16) and none is None
  assert tok_train.epoch_plan(key, 48, 16, "short")[1] is None        # no remainder
  feats = jax.random.normal(jax.random.key(0), (50, 6))
  model = RQVAE(RQVAEConfig(in_dim=6, hidden=(16,), code_dim=4, levels=2, codebook_size=8,
                            modes=("hard", "hard")))
  params = tok_train.jit_init(model, {"params": jax.random.key(1)}, feats[:2], train=False)
  tx = make_optimizer(1e-2, 0.0, 8, 0, 1.0, "constant")
  fresh = lambda: TrainState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.copy, params),
                             tx.init(params))   # train_epoch donates its state
  k = jax.random.key(2)
  one, m = tok_train.train_epoch(fresh(), feats, full, k, None, tail, model=model, tx=tx)
  two, m3 = tok_train.train_epoch(fresh(), feats, full, k, model=model, tx=tx)
  two, m1 = tok_train.train_epoch(two, feats, tail[None], k, model=model, tx=tx)
  assert int(one.step) == 4
  chex.assert_trees_all_close(one.params, two.params, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(float(m["loss"]), (3 * float(m3["loss"]) + float(m1["loss"])) / 4,
                             rtol=1e-5)


def test_letter_preset_widths_follow_the_input():
  from jaxrec.tokenizer.rqvae import halving_widths
  assert halving_widths(4096, 32) == (2048, 1024, 512, 256, 128, 64)  # LETTER's LLaMA encoder
  assert halving_widths(32, 32) == (256, 128, 64)  # too narrow to halve: fixed fallback


def test_tiger_instruments_config_is_the_tiger_preset():
  import tiger
  from jaxrec.tokenizer.rqvae import PRESETS
  tok = tiger.get_config("instruments").tokenizer
  for k, v in PRESETS["tiger"].items():
    assert (tuple(tok[k]) if isinstance(v, tuple) else tok[k]) == v, k


def test_killed_tokenizer_fit_resumes_exactly(tmp_path, monkeypatch):
  """A fit killed after its epoch-4 checkpoint resumes there and ends with the same
  parameters and IDs as an uninterrupted fit; its checkpoints are removed once the code
  table is written."""
  import os
  from jaxrec.tokenizer import train as tok_train
  feats = np.asarray(jax.random.normal(jax.random.key(0), (50, 6)), np.float32)
  ds = from_sequences("t", [[0, 1, 2]], 50, features={"f": feats})
  cfg = _tiny_tok_cfg(epochs=8, save_every=2)
  full, (_, full_params) = build_code_table(cfg, ds, jax.random.key(1), seed=1,
                                            workdir=str(tmp_path / "full"))
  real = tok_train.FitCheckpoints.save

  def killed(self, epochs_done, *a):
    real(self, epochs_done, *a)
    if epochs_done == 4:
      raise KeyboardInterrupt("simulated kill")

  monkeypatch.setattr(tok_train.FitCheckpoints, "save", killed)
  with pytest.raises(KeyboardInterrupt):
    build_code_table(cfg, ds, jax.random.key(1), seed=1, workdir=str(tmp_path / "w"))
  monkeypatch.setattr(tok_train.FitCheckpoints, "save", real)
  lines = []
  resumed, (_, params) = build_code_table(cfg, ds, jax.random.key(1), seed=1,
                                          workdir=str(tmp_path / "w"), log=lines.append)
  ckpt_dir = tmp_path / "w" / "checkpoints" / f"tokenizer-{full.fingerprint[:16]}"
  assert os.path.exists(ckpt_dir)                  # kept until the code table is saved
  write_outputs(resumed, str(tmp_path / "w"), ds, "t")
  assert any("resumed from" in str(l) and "(epoch 4)" in str(l) for l in lines), lines
  assert [r["epoch"] for r in lines if "epoch" in r] == [6, 8]      # epochs 5..8 only
  np.testing.assert_array_equal(resumed.codes_NxC, full.codes_NxC)
  chex.assert_trees_all_equal(params, full_params)
  assert not os.path.exists(ckpt_dir)


def test_given_ids_of_another_depth_than_the_config_are_refused():
  from jaxrec.config import ConfigError
  codes = np.array([[0, 1], [1, 0], [1, 1]], np.int32)
  ds = from_sequences("t", [[0, 1, 2]], 3, codes_NxC=codes, code_sizes=(2, 2))
  with pytest.raises(ConfigError, match=r"tokenizer.levels=3 but the data set's given IDs "
                     r"\(t.index.json\) have 2 levels: set tokenizer.levels=2"):
    build_code_table(_tiny_tok_cfg(source="given", levels=3), ds, jax.random.key(0), seed=0)
  table, _ = build_code_table(_tiny_tok_cfg(source="given", levels=2, collision="suffix"), ds,
                              jax.random.key(0), seed=0)
  np.testing.assert_array_equal(table.codes_NxC[:, :2], codes)


def test_fit_streams_differ_per_epoch_and_step():
  """The epoch permutations and the per-step noise never draw the same bits (they did when
  both were fold_in(key, n) of one key: epoch n's permutation = step n's noise key)."""
  from jaxrec.tokenizer.train import fit_streams
  k_perm, k_step = fit_streams(jax.random.key(0))
  bits = lambda k, n: tuple(np.asarray(jax.random.key_data(jax.random.fold_in(k, n))).tolist())
  perm = {bits(k_perm, n) for n in range(64)}
  step = {bits(k_step, n) for n in range(64)}
  assert len(perm) == 64 and len(step) == 64 and not perm & step


def test_rq_kmeans_recovers_planted_clusters_and_its_residuals_add_up(tmp_path):
  """RQ-KMeans (no autoencoder): on 4 well-separated blobs level 0 is the blob, each item's
  chosen centroids plus its last residual rebuild its feature, and a workdir reuses it."""
  rng = np.random.default_rng(0)
  centers = 10.0 * np.eye(4, 6)
  blob = np.repeat(np.arange(4), 30)
  feats = (centers[blob] + 0.1 * rng.normal(size=(120, 6))).astype(np.float32)
  ds = from_sequences("t", [[0, 1, 2]], 120, features={"f": feats})
  cfg = _tiny_tok_cfg(source="rqkmeans", codebook_size=4, kmeans_iters=10, collision="suffix",
                      suffix_size=64)
  table, tok = build_code_table(cfg, ds, jax.random.key(0), seed=0, workdir=str(tmp_path))
  assert tok is None and table.stats["source"] == "rqkmeans"
  first = table.codes_NxC[:, 0]
  assert all(len(set(first[blob == b])) == 1 for b in range(4)) and len(set(first)) == 4
  assert table.stats["final"]["colliding_items"] == 0 and table.depth == 3   # + suffix level
  from jaxrec.tokenizer import rqkmeans
  books, codes, residuals = rqkmeans.fit(cfg, feats, jax.random.fold_in(jax.random.key(0), 7))
  rebuilt = sum(books[l][codes[:, l]] for l in range(cfg.levels))
  last = residuals[:, -1] - books[-1][codes[:, -1]]
  np.testing.assert_allclose(rebuilt + last, feats, atol=1e-4)
  write_outputs(table, str(tmp_path), ds, "rqkmeans")
  again, _ = build_code_table(cfg, ds, jax.random.key(5), seed=0, workdir=str(tmp_path))
  np.testing.assert_array_equal(again.codes_NxC, table.codes_NxC)   # reused by fingerprint


def test_keep_lowest_collision_returns_the_logged_epoch_with_most_distinct_ids():
  """tokenizer.keep='lowest_collision' (ETEGRec's pre-training): the parameters returned
  code the catalogue with as many distinct IDs as the best logged epoch."""
  from jaxrec.tokenizer.rqvae import RQVAE, rqvae_config
  from jaxrec.tokenizer.train import encode_catalogue, fit
  feats = np.asarray(jax.random.normal(jax.random.key(0), (120, 6)), np.float32)
  cfg = _tiny_tok_cfg(keep="lowest_collision", epochs=12, log_every=2, reseed_every=0,
                      modes=("hard", "hard"), codebook_size=6, lr=3e-3)
  model, params, history = fit(cfg, rqvae_config(cfg, 6), feats, jax.random.key(3))
  best = max(r["distinct_ids"] for r in history)
  kept = [r for r in history if r.get("kept")]
  assert kept and kept[-1]["distinct_ids"] == best
  codes = encode_catalogue(params, jnp.asarray(feats), model=RQVAE(rqvae_config(cfg, 6)))
  assert len({tuple(c) for c in np.asarray(codes["codes_NxC"])}) == best
  ds = from_sequences("t", [[0, 1, 2]], 120, features={"f": feats})
  cfg.suffix_size = 64
  table, _ = build_code_table(cfg, ds, jax.random.key(3), seed=1)   # codes.json's stats
  assert table.stats["kept"]["kept"] and table.stats["kept"]["epoch"] <= 12
  epochs, rates, _ = zip(*table.stats["collisions"])
  assert epochs == (2, 4, 6, 8, 10, 12)
  assert min(rates) == rates[epochs.index(table.stats["kept"]["epoch"])]
  assert table.stats["kept"]["distinct_ids"] == table.stats["before_resolution"]["distinct_ids"]
  last, _ = build_code_table(_tiny_tok_cfg(epochs=2, suffix_size=64), ds, jax.random.key(3),
                             seed=1)
  assert "kept" not in last.stats


def test_xavier_init_is_the_official_rqvae_codes_and_flax_stays_the_default():
  """tokenizer.init='xavier' (the official LETTER / ETEGRec MLPs): kernels normal with std
  sqrt(2 / (fan_in + fan_out)), biases 0; 'flax' (the default): lecun normal, std
  sqrt(1 / fan_in)."""
  from jaxrec.tokenizer.rqvae import MLP
  x = jnp.zeros((2, 300))
  xav = MLP((500, 32), init_scheme="xavier").init(jax.random.key(0), x, False)["params"]
  assert np.std(np.asarray(xav["dense_0"]["kernel"])) == pytest.approx(np.sqrt(2 / 800), rel=0.03)
  assert not np.asarray(xav["dense_0"]["bias"]).any()
  default = MLP((500, 32)).init(jax.random.key(0), x, False)["params"]
  assert np.std(np.asarray(default["dense_0"]["kernel"])) == pytest.approx(np.sqrt(1 / 300),
                                                                           rel=0.05)
