"""SimCIT: its loss terms against direct computations, the soft quantizer's limit, fusion,
permutation equivariance of the IDs, and a tiny run end to end."""
import functools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simcit as simcit_config
from jaxrec import pipeline
from jaxrec.data.synthetic import SyntheticSpec, generate
from jaxrec.tokenizer import simcit
from jaxrec.tokenizer.rq import residual_quantize
from jaxrec.xla import jit_init


def test_grace_nce_equals_direct_numpy():
  rng = np.random.default_rng(0)
  q, v = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
  t = 0.07
  qn = q / np.linalg.norm(q, axis=1, keepdims=True)
  vn = v / np.linalg.norm(v, axis=1, keepdims=True)
  e = lambda a, b: np.exp(a @ b / t)
  want = np.mean([-np.log(e(qn[i], vn[i]) / (sum(e(qn[i], qn[j]) + e(qn[i], vn[j])
                                                 for j in range(6)) - e(qn[i], qn[i])))
                  for i in range(6)])
  got = simcit.grace_nce(jnp.asarray(q, jnp.float32), jnp.asarray(v, jnp.float32), t)
  assert float(got) == pytest.approx(want, rel=1e-4)


def test_gram_penalty_known_values():
  k = 8
  orthogonal = jnp.stack([jnp.eye(k) * 3.0, -jnp.eye(k)])       # 2 levels, K = D = 8
  assert float(simcit.gram_penalty(orthogonal)) == pytest.approx(1 / k)
  identical = jnp.ones((2, k, 5)) * jnp.arange(1, 6)
  assert float(simcit.gram_penalty(identical)) == pytest.approx(1.0)


def test_soft_assignment_tends_to_the_hard_one():
  rng = np.random.default_rng(1)
  cb = jnp.asarray(rng.normal(size=(1, 16, 4)) * 10, jnp.float32)
  codes = rng.integers(0, 16, 32)
  z = cb[0][codes] + jnp.asarray(rng.normal(size=(32, 4)) * 0.01, jnp.float32)
  run = functools.partial(residual_quantize, z, cb, modes=("gumbel",), residual_grad="through",
                          key=jax.random.key(0))
  soft = run(train=True, gumbel_tau=1e-3)
  hard = run(train=False)
  np.testing.assert_array_equal(np.asarray(hard.codes_BxC[:, 0]), codes)
  np.testing.assert_allclose(soft.quantized_BxD, cb[0][codes], atol=1e-4)
  # at a high temperature the soft vector is a mixture, not a codeword
  warm = run(train=True, gumbel_tau=1e4)
  assert float(jnp.min(jnp.abs(warm.quantized_BxD - cb[0][codes]).max(1))) > 1.0


def test_gumbel_scale_zero_is_the_plain_softmax_mixture():
  rng = np.random.default_rng(3)
  cb = jnp.asarray(rng.normal(size=(1, 8, 4)), jnp.float32)
  z = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  run = functools.partial(residual_quantize, z, cb, modes=("gumbel",), train=True,
                          residual_grad="through", gumbel_tau=0.2)
  d = np.square(np.asarray(z)[:, None] - np.asarray(cb[0])[None]).sum(-1)
  w = np.exp(-(d - d.min(1, keepdims=True)) / 0.2)
  want = (w / w.sum(1, keepdims=True)) @ np.asarray(cb[0])
  for key in (0, 1):      # no noise: the key does not matter
    got = run(key=jax.random.key(key), gumbel_scale=0.0).quantized_BxD
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  noisy = run(key=jax.random.key(0), gumbel_scale=1.0).quantized_BxD
  assert float(jnp.max(jnp.abs(noisy - want))) > 1e-2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("simcit"))
  cfg = simcit_config.get_config("tiny")
  results = pipeline.train_and_evaluate(cfg, workdir, log=lambda m: None)
  return cfg, workdir, results


def test_tiny_run_codes_and_decodes(tiny):
  cfg, workdir, results = tiny
  assert results["tokenizer"]["source"] == "simcit"
  assert len(results["tokenizer"]["fusion_weights"]) == 2
  before = results["tokenizer"]["before_resolution"]
  assert min(before["used"]) >= 8, before            # no collapse with k-means init
  assert results["tokenizer"]["final"]["colliding_items"] == 0
  assert 0 <= results["test"]["recall@10"] <= 1
  for name in ("codes.npz", "tokenizer.msgpack", "results.json", "report.png"):
    assert os.path.exists(os.path.join(workdir, name))


def test_permuting_items_permutes_their_ids(tiny):
  cfg, workdir, _ = tiny
  ds, _ = generate(SyntheticSpec(**cfg.data.synthetic.to_dict()))
  views = simcit.load_views(cfg, ds)
  model = simcit.model_for(cfg, views)
  table, (model, params) = simcit.build_code_table(cfg, ds, jax.random.key(0), workdir=workdir)
  codes = np.asarray(simcit.encode_catalogue(params, [jnp.asarray(v) for v in views],
                                             model=model)["codes_NxC"])
  perm = np.random.default_rng(0).permutation(ds.n_items)
  permuted = np.asarray(simcit.encode_catalogue(params, [jnp.asarray(v[perm]) for v in views],
                                                model=model)["codes_NxC"])
  np.testing.assert_array_equal(permuted, codes[perm])
  np.testing.assert_array_equal(table.codes_NxC[:, :-1], codes)   # the reused table's prefix


def test_one_view_fuses_to_its_own_encoding():
  model = simcit.SimCIT(simcit.SimCITConfig(view_dims=(6,), hidden=(8,), dim=4, levels=2,
                                            codebook_size=3))
  x = [jnp.asarray(np.random.default_rng(2).normal(size=(5, 6)), jnp.float32)]
  params = jit_init(model, jax.random.key(0), x, train=False)
  fused, h, weights = model.apply(params, x, method=simcit.SimCIT.encode)
  np.testing.assert_array_equal(np.asarray(weights), 1.0)
  chex.assert_trees_all_close(fused, h[0], atol=1e-7)


def test_prefix_loss_averages_the_levels_prefixes():
  """prefix_loss (the official forward's commented-out alternative): with 2 levels a view's
  term is the mean of the InfoNCE of the first codeword's projection and of the full
  quantized vector's, each against the projected view; off, the latter alone."""
  model = simcit.SimCIT(simcit.SimCITConfig(view_dims=(6,), hidden=(8,), dim=4, levels=2,
                                            codebook_size=3, gumbel_tau=0.2, gumbel_scale=0.0))
  views = [jnp.asarray(np.random.default_rng(0).normal(size=(5, 6)), jnp.float32)]
  params = jit_init(model, jax.random.key(0), views, train=True, key=jax.random.key(1))
  loss = functools.partial(simcit.loss_fn, params, views, jax.random.key(2), model=model,
                           temperature=0.07, w_div=0.0, w_commit=0.0, groups=1)
  rq, q, p = model.apply(params, views, True, jax.random.key(2))
  first = model.apply(params, rq.residuals_BxCxD[:, 0] - rq.residuals_BxCxD[:, 1],
                      method=simcit.SimCIT.project)
  full, part = simcit.grace_nce(q, p[0], 0.07), simcit.grace_nce(first, p[0], 0.07)
  assert float(loss(prefix_loss=False)[1]["nce_view0"]) == pytest.approx(float(full), rel=1e-5)
  assert float(loss(prefix_loss=True)[1]["nce_view0"]) == pytest.approx(
      float(full + part) / 2, rel=1e-5)
  assert abs(float(full) - float(part)) > 1e-3


def test_reconstruction_control_adds_each_views_decoded_error():
  """w_recon > 0 (the control that adds a reconstruction loss back): the loss is the
  contrastive one plus w_recon times the sum over views of the squared error of each view
  decoded from the quantized vector; a step of it lowers that error; without it the model has
  no decoders and the same other parameters."""
  cfg = dict(view_dims=(6, 3), hidden=(8,), dim=4, levels=2, codebook_size=3,
             gumbel_tau=0.2, gumbel_scale=0.0)
  plain = simcit.SimCIT(simcit.SimCITConfig(**cfg))
  model = simcit.SimCIT(simcit.SimCITConfig(**cfg, decoders=True))
  rng = np.random.default_rng(0)
  views = [jnp.asarray(rng.normal(size=(5, d)), jnp.float32) for d in (6, 3)]
  params = simcit.init_params(model, jax.random.key(0), views)
  base = simcit.init_params(plain, jax.random.key(0), views)
  assert {"decoder0", "decoder1"} <= set(params["params"]) and "decoder0" not in base["params"]
  chex.assert_trees_all_equal({k: v for k, v in params["params"].items()
                               if not k.startswith("decoder")}, base["params"])
  loss = functools.partial(simcit.loss_fn, views=views, key=jax.random.key(2), model=model,
                           temperature=0.07, w_div=0.5, w_commit=0.0, groups=1)
  total, m = loss(params, w_recon=2.0)
  rq, _, _ = model.apply(params, views, True, jax.random.key(2))
  outs = model.apply(params, rq.quantized_BxD, method=simcit.SimCIT.reconstruct)
  want = sum(np.mean(np.sum((np.asarray(o) - np.asarray(x)) ** 2, axis=1))
             for o, x in zip(outs, views))
  assert float(m["recon"]) == pytest.approx(want, rel=1e-5)
  assert float(total) == pytest.approx(float(m["nce"] + 0.5 * m["gram"] + 2.0 * want), rel=1e-5)
  grads = jax.grad(lambda p: loss(p, w_recon=2.0)[0])(params)
  stepped = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
  assert float(loss(stepped, w_recon=2.0)[1]["recon"]) < float(m["recon"])


def test_heldout_selection_keeps_the_best_logged_epoch(tmp_path):
  """tokenizer.simcit.holdout: the held-out items never train the tokenizer, each logged
  epoch reports their hard-ID InfoNCE and the held-out loss (plus w_div x the Gram term, as
  the released eval loss), and the tokenizer kept (which codes the catalogue) is the logged
  epoch with the lowest loss."""
  from jaxrec.data import load_dataset
  train, held = simcit.split_heldout(100, 0.2, 8, seed=0)
  assert held.shape == (2, 8) and len(train) == 80
  assert not set(held.ravel()) & set(train) and len(set(held.ravel())) == 16
  assert simcit.split_heldout(100, 0.0, 8, 0)[1].size == 0
  cfg = simcit_config.get_config("tiny")
  cfg.tokenizer.simcit.holdout = 0.25
  cfg.tokenizer.epochs, cfg.tokenizer.log_every = 6, 2
  ds = load_dataset(cfg.data)
  logs = []
  table, (model, params) = simcit.build_code_table(cfg, ds, jax.random.key(0), str(tmp_path),
                                                   log=logs.append)
  records = [r for r in logs if isinstance(r, dict) and "heldout_nce" in r]
  losses = [r["heldout_loss"] for r in records]
  assert len(losses) == 3
  views = [jnp.asarray(v) for v in simcit.load_views(cfg, ds)]
  _, held = simcit.split_heldout(ds.n_items, 0.25, cfg.tokenizer.batch_size, cfg.seed)
  kept = float(simcit.heldout_nce(params, views, jnp.asarray(held), model=model,
                                  temperature=cfg.tokenizer.simcit.temperature, groups=1))
  kept += cfg.tokenizer.simcit.w_div * float(simcit.gram_penalty(params["params"]["codebooks"]))
  assert kept == pytest.approx(min(losses), abs=1e-5)
  assert records[int(np.argmin(losses))].get("kept")
  codes = simcit.encode_catalogue(params, views, model=model)["codes_NxC"]
  np.testing.assert_array_equal(np.asarray(codes), table.codes_NxC[:, :codes.shape[1]])


def test_heldout_selection_takes_the_lowest_not_the_last(tmp_path, monkeypatch):
  """With held-out losses 3, 1, 2 at the logged epochs the tokenizer kept is the second
  logged epoch's (the parameters the loss was computed on), not the last one's."""
  from jaxrec.data import load_dataset
  seen, script = [], iter([3.0, 1.0, 2.0])

  def scripted(params, *a, **k):
    seen.append(jax.tree.map(np.asarray, params))
    return next(script)
  monkeypatch.setattr(simcit, "heldout_nce", scripted)
  cfg = simcit_config.get_config("tiny")
  cfg.tokenizer.simcit.holdout = 0.25
  cfg.tokenizer.simcit.w_div = 0.0          # the held-out loss is the scripted InfoNCE alone
  cfg.tokenizer.epochs, cfg.tokenizer.log_every = 6, 2
  _, (_, params) = simcit.build_code_table(cfg, load_dataset(cfg.data), jax.random.key(0),
                                           str(tmp_path), log=lambda m: None)
  assert len(seen) == 3
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, params), seen[1])
  assert not np.array_equal(seen[1]["params"]["codebooks"], seen[2]["params"]["codebooks"])


def test_torch_init_is_pytorchs_linear_default():
  """init='torch': every kernel and bias uniform in +-1/sqrt(fan_in) (PyTorch's nn.Linear),
  the same parameter tree as Flax's default init."""
  cfg = dict(view_dims=(300,), hidden=(400,), dim=64, levels=2, codebook_size=3)
  views = [jnp.zeros((2, 300), jnp.float32)]
  torch_p = simcit.init_params(simcit.SimCIT(simcit.SimCITConfig(**cfg, torch_init=True)),
                               jax.random.key(0), views)["params"]
  flax_p = simcit.init_params(simcit.SimCIT(simcit.SimCITConfig(**cfg)), jax.random.key(0),
                              views)["params"]
  chex.assert_trees_all_equal_shapes(torch_p, flax_p)
  k0 = np.asarray(torch_p["encoder0"]["Dense_0"]["kernel"])        # fan_in 300
  k1 = np.asarray(torch_p["encoder0"]["Dense_1"]["kernel"])        # fan_in 400
  for k, fan_in in ((k0, 300), (k1, 400)):
    bound = 1 / np.sqrt(fan_in)
    assert np.abs(k).max() <= bound and np.abs(k).max() > 0.95 * bound
    assert np.std(k) == pytest.approx(bound / np.sqrt(3), rel=0.05)
  bias = np.asarray(torch_p["proj"]["bias"])                       # fan_in 64
  assert np.abs(bias).max() <= 1 / 8 and np.abs(bias).max() > 0.05
  assert not np.asarray(flax_p["proj"]["bias"]).any()
  assert np.std(np.asarray(flax_p["encoder0"]["Dense_0"]["kernel"])) > 1.5 * np.std(k0)


def test_groups_split_the_batch_into_parts_with_their_own_negatives():
  """groups=2 (the released 2 processes): each half of the batch is its own InfoNCE, the
  loss their mean; a batch of 2 x 4 items is not a batch of 8."""
  model = simcit.SimCIT(simcit.SimCITConfig(view_dims=(6,), hidden=(8,), dim=4, levels=2,
                                            codebook_size=3, gumbel_scale=0.0))
  views = [jnp.asarray(np.random.default_rng(1).normal(size=(8, 6)), jnp.float32)]
  params = simcit.init_params(model, jax.random.key(0), views)
  loss = functools.partial(simcit.loss_fn, params, key=jax.random.key(2), model=model,
                           temperature=0.07, w_div=0.0, w_commit=0.0)
  halves = [float(loss([v[:4] for v in views], groups=1)[1]["nce"]),
            float(loss([v[4:] for v in views], groups=1)[1]["nce"])]
  got = float(loss(views, groups=2)[1]["nce"])
  assert got == pytest.approx(np.mean(halves), rel=1e-5)
  assert got != pytest.approx(float(loss(views, groups=1)[1]["nce"]), rel=1e-3)
  cfg = simcit_config.get_config("scientific")
  assert (cfg.tokenizer.batch_size, simcit.negative_groups(cfg.tokenizer.simcit, 1),
          simcit.negative_groups(simcit_config.get_config("default").tokenizer.simcit, 2)) == (512, 2, 1)


def test_sharpness_spans_uniform_to_hard():
  """bench/experiments/simcit_gap.py's sharpness: a huge gumbel_tau gives uniform weights
  (nearest weight 1 / K, K effective codes), a tiny one the hard ID (1 and 1)."""
  from bench.experiments import simcit_gap
  x = [jnp.asarray(np.random.default_rng(2).normal(size=(5, 6)), jnp.float32)]
  for tau, weight, codes in ((1e6, 1 / 3, 3.0), (1e-6, 1.0, 1.0)):
    model = simcit.SimCIT(simcit.SimCITConfig(view_dims=(6,), hidden=(8,), dim=4, levels=2,
                                              codebook_size=3, gumbel_tau=tau))
    params = jit_init(model, jax.random.key(0), x, train=False)
    got = simcit_gap.sharpness(params, x, jax.random.key(1), model)
    np.testing.assert_allclose(got["nearest_weight"], [weight] * 2, atol=1e-3)
    np.testing.assert_allclose(got["effective_codes"], [codes] * 2, atol=0.05)
