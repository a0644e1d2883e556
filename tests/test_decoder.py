"""The decoder-only recommender: cached decoding equals the teacher-forced pass, padding and
later tokens change nothing they should not, the loss options, its config checks."""
import dataclasses
import functools
import itertools
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import decode
from jaxrec.config import config_problems, get_config
from jaxrec.recommender import decoder_steps as steps
from jaxrec.recommender.decoder import Decoder, DecoderConfig, rope

# user tokens, grouped key/value heads, q/k/v biases, a ReLU and a SwiGLU variant
TINY = DecoderConfig(level_sizes=(6, 5, 4), d_model=16, d_ff=24, heads=4, kv_heads=2,
                     head_dim=8, layers=2, dropout=0.0, user_buckets=7, qkv_bias=True)
TINY_RELU = dataclasses.replace(TINY, mlp="relu", kv_heads=0, qkv_bias=False, user_buckets=0)
# an LLM's layout: 20 text rows before the codes, untied output, Qwen3's q/k norms, a prompt
# framing the history, LoRA adapters
TINY_LLM = dataclasses.replace(TINY, vocab_rows=20, tie_embeddings=False, qk_norm=True,
                               qkv_bias=False, user_buckets=0, prompt_head=(1, 2),
                               prompt_sep=(3,), prompt_tail=(4, 5), lora_rank=2)
# LC-Rec's loss: the codes and EOS (row 0) over the whole vocabulary
TINY_LM = dataclasses.replace(TINY_LLM, loss="lm", eos=0)

HIST = np.array([[3, 7, 0], [1, 2, 0], [4, 0, 0], [9, 8, 5], [6, 6, 0]], np.int32)
MASK = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]], bool)


@functools.lru_cache(maxsize=None)
def _tiny(cfg: DecoderConfig):
  """A tiny decoder of `cfg` with random weights (std 0.3: peaked distributions), 30
  items' IDs, 5 users' histories."""
  rng = np.random.default_rng(1)
  all_ids = np.array(list(itertools.product(range(6), range(5), range(4))), np.int32)
  codes = jnp.asarray(all_ids[rng.choice(len(all_ids), 30, replace=False)])
  model = Decoder(dataclasses.replace(cfg, init_std=0.3))
  batch = _batch(HIST, MASK, np.arange(5))
  params = steps.init_params(model, codes, batch, jax.random.key(0))
  return model, params, codes


def _batch(hist, mask, target):
  n = len(hist)
  return {"history_BxL": jnp.asarray(hist), "mask_BxL": jnp.asarray(mask),
          "user_B": jnp.arange(n, dtype=jnp.int32), "target_B": jnp.asarray(target, jnp.int32),
          "weight_B": jnp.ones(n)}


@functools.partial(jax.jit, static_argnames="model")
def _target_logp(params, batch, codes, *, model):
  """log p of each target code, teacher-forced: [B, C]."""
  logits, labels, _ = steps.forward(params, model, batch, codes, False)
  logp = jax.nn.log_softmax(logits, -1)
  return jnp.take_along_axis(logp, labels[..., None], -1)[..., 0][:, :model.cfg.levels]


@pytest.mark.parametrize("cfg", [TINY, TINY_RELU, TINY_LLM, TINY_LM],
                         ids=["gqa_bias_user", "relu", "llm", "lm_loss"])
def test_beam_scores_equal_teacher_forced_log_probs(cfg):
  """The prefix pass plus cached positions must score every returned ID exactly as the
  teacher-forced sequence does, for histories of every length (padding between the
  history and BOS), beam 8 and beam 1."""
  model, params, codes = _tiny(cfg)
  tok, m = steps.prefix_tokens(codes, jnp.asarray(HIST), jnp.asarray(MASK), model.cfg)
  users = jnp.arange(5)
  for beam in (8, 1):
    items, scores = steps.generate(params, tok, m, users, decode.prefix_tables(codes),
                                   model=model, beam=beam)
    items = np.asarray(items)
    assert (items >= 0).all()
    for b in range(5):
      assert len(set(items[b].tolist())) == beam
      rep = lambda x: np.repeat(x[b:b + 1], beam, axis=0)
      batch = _batch(rep(HIST), rep(MASK), items[b])
      batch["user_B"] = jnp.full((beam,), b, jnp.int32)
      total = np.asarray(_target_logp(params, batch, codes, model=model)).sum(-1)
      np.testing.assert_allclose(np.asarray(scores[b]), total, rtol=1e-4, atol=1e-4)


def test_lm_loss_is_the_vocabulary_cross_entropy_of_the_codes_and_eos():
  """model.loss='lm' (LC-Rec): the mean over the target's C code tokens and EOS of their
  negative log-probability over the whole vocabulary, from one teacher-forced pass."""
  model, params, codes = _tiny(TINY_LM)
  cfg = model.cfg
  rows = [0, 2]                                         # histories of 3 items and 1
  batch = _batch(HIST[rows], MASK[rows], np.arange(2))
  batch["user_B"] = jnp.asarray(rows, jnp.int32)
  loss, out = jax.jit(functools.partial(steps.batch_loss, model=model))(
      params, batch, codes, jax.random.key(0))
  want = []
  for b, u in zip(range(2), rows):
    tok, m = steps.prefix_tokens(codes, jnp.asarray(HIST[u:u + 1]), jnp.asarray(MASK[u:u + 1]), cfg)
    tok = np.asarray(tok)[0][np.asarray(m)[0]]                 # the real tokens only
    ids = np.asarray(codes[b]) + np.asarray(cfg.offsets)
    seq = jnp.asarray(np.concatenate([tok, ids])[None])
    hidden, _, _ = model.apply(params, seq, jnp.ones(seq.shape, bool), jnp.asarray([u]))
    logp = jax.nn.log_softmax(model.apply(params, hidden[0], method=Decoder.vocab_logits))
    n = len(tok)
    want += [-logp[n - 1 + i, t] for i, t in enumerate(list(ids) + [cfg.eos])]
  np.testing.assert_allclose(loss, np.mean(want), rtol=1e-5)
  assert 0.0 <= out["id_accuracy"] <= 1.0


def test_prompt_frames_the_history():
  """With prompt tokens: head, the items' codes joined by the separator (none before the
  first item), tail; padded items and the separators before them are masked."""
  codes = jnp.array([[0, 1, 2], [5, 4, 3], [1, 1, 1]], jnp.int32)
  tok, m = steps.prefix_tokens(codes, jnp.array([[1, 2, 0]]), jnp.array([[1, 1, 0]], bool),
                               TINY_LLM)
  row = lambda i: (np.asarray(codes[i]) + np.asarray(TINY_LLM.offsets)).tolist()
  assert TINY_LLM.offsets == (20, 26, 31)
  assert np.asarray(tok)[0].tolist() == [1, 2] + row(1) + [3] + row(2) + [3] + row(0) + [4, 5]
  assert np.asarray(m)[0].tolist() == [True] * 9 + [False] * 4 + [True] * 2


def test_lora_trains_only_the_adapters_and_id_rows():
  """With LoRA and train_rows='ids', AdamW steps (weight decay on) change the adapters and
  the ID rows only: every pretrained kernel, norm and row stays bit for bit."""
  from jaxrec.optim import TrainState, optimizer_and_schedule
  cfg = dataclasses.replace(TINY_LLM, train_rows="ids", lora_targets=("q", "v", "up"))
  model, params, codes = _tiny(cfg)
  tx, _ = optimizer_and_schedule(1e-2, 0.1, 10, 0, 1.0, trainable=steps.trainable(model))
  state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx))
  for _ in range(3):
    state, out = step(state, _batch(HIST, MASK, np.arange(5)), codes, jax.random.key(0))
  changed = jax.tree_util.tree_map_with_path(
      lambda path, a, b: (jax.tree_util.keystr(path), bool(np.any(np.asarray(a) != np.asarray(b)))),
      params, state.params)
  flags = dict(jax.tree.leaves(changed, is_leaf=lambda x: isinstance(x, tuple)))
  moved = sorted(k for k, v in flags.items() if v)
  assert moved and all(("lora_b" in k or "lora_a" in k or "id_" in k) for k in moved), moved
  assert any("id_embed" in k for k in moved) and any("lora_b" in k for k in moved)
  assert not any("'k'" in k and "lora" in k for k in flags)        # k: not a target
  assert np.isfinite(float(out["loss"]))


def test_lora_in_bf16_stores_frozen_weights_in_bf16():
  """train.dtype='bfloat16' with LoRA: the frozen kernels and norms are stored in bf16, the
  adapters and ID rows stay float32, and a step keeps those dtypes."""
  from jaxrec.optim import TrainState, optimizer_and_schedule
  cfg = dataclasses.replace(TINY_LLM, train_rows="ids", dtype="bfloat16", init_std=0.3)
  model = Decoder(cfg)
  rng = np.random.default_rng(1)
  codes = jnp.asarray(rng.integers(0, 4, (30, 3)), jnp.int32)
  params = steps.init_params(model, codes, _batch(HIST, MASK, np.arange(5)), jax.random.key(0))
  p = params["params"]
  assert p["blocks_0"]["attn"]["q"]["kernel"].dtype == jnp.bfloat16
  assert p["blocks_0"]["norm1"]["scale"].dtype == jnp.bfloat16
  assert p["blocks_0"]["attn"]["q"]["lora_b"].dtype == jnp.float32
  assert p["id_embed"].dtype == jnp.float32 and p["embed"].dtype == jnp.bfloat16
  tx, _ = optimizer_and_schedule(1e-2, 0.1, 10, 0, 1.0, trainable=steps.trainable(model))
  state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  state, out = jax.jit(functools.partial(steps.train_step, model=model, tx=tx))(
      state, _batch(HIST, MASK, np.arange(5)), codes, jax.random.key(0))
  chex.assert_trees_all_equal_dtypes(state.params, params)
  assert np.isfinite(float(out["loss"]))


def test_exhaustive_beam_ranks_the_catalogue():
  """A beam as wide as the catalogue returns all 30 items in the order of their
  teacher-forced scores: the search's answer is known."""
  model, params, codes = _tiny(TINY)
  tok, m = steps.prefix_tokens(codes, jnp.asarray(HIST[:1]), jnp.asarray(MASK[:1]), model.cfg)
  items, scores = steps.generate(params, tok, m, jnp.zeros(1, jnp.int32),
                                 decode.prefix_tables(codes), model=model, beam=30)
  batch = _batch(np.repeat(HIST[:1], 30, 0), np.repeat(MASK[:1], 30, 0), np.arange(30))
  batch["user_B"] = jnp.zeros(30, jnp.int32)
  total = np.asarray(_target_logp(params, batch, codes, model=model)).sum(-1)
  order = np.argsort(-total, kind="stable")
  np.testing.assert_array_equal(np.asarray(items[0]), order)
  np.testing.assert_allclose(np.asarray(scores[0]), total[order], rtol=1e-4, atol=1e-4)


def test_padding_changes_nothing():
  """A history padded to 3 or to 6 items, whatever the padding's item ids, gives the same
  target log-probabilities: padded positions are masked and skipped by the positions."""
  model, params, codes = _tiny(TINY)
  base = np.asarray(_target_logp(params, _batch(HIST, MASK, np.arange(5)), codes, model=model))
  wide = np.full((5, 6), 11, np.int32)
  wide[:, :3] = np.where(MASK, HIST, 17)
  wide_mask = np.zeros((5, 6), bool)
  wide_mask[:, :3] = MASK
  other = np.asarray(_target_logp(params, _batch(wide, wide_mask, np.arange(5)), codes,
                                  model=model))
  np.testing.assert_allclose(other, base, rtol=1e-5, atol=1e-5)


def test_positions_see_only_the_past():
  """The prediction of target level l does not change with the target's later codes (the
  causal mask), and does change with the history (the model reads it)."""
  model, params, codes = _tiny(TINY)
  batch = _batch(HIST[:1], MASK[:1], [5])                      # item 5: not in the history
  logits = lambda c: steps.forward(params, model, batch, c, False)[0][0]
  later = codes.at[5, 1].set((codes[5, 1] + 1) % 5)           # the target's level-1 code
  chex.assert_trees_all_close(logits(codes)[:2], logits(later)[:2], atol=1e-6)
  assert not np.allclose(logits(codes)[2], logits(later)[2])    # level 2 reads level 1
  earlier = codes.at[HIST[0, 0], 0].set((codes[HIST[0, 0], 0] + 1) % 6)   # a history code
  assert not np.allclose(logits(codes)[0], logits(earlier)[0])


def test_loss_all_adds_the_history_codes():
  """loss='all' is the target loss plus the mean next-code loss over the history's real
  codes (each predicted at the position before it, against its level); padding adds
  nothing."""
  cfg = dataclasses.replace(TINY_RELU, loss="all")
  model, params, codes = _tiny(cfg)
  batch = _batch(HIST, MASK, np.arange(5))
  logits, labels, extra = steps.forward(params, model, batch, codes, False)
  loss, out = steps.loss_terms(logits, labels, extra, batch["weight_B"])
  target_only, _ = steps.loss_terms(logits, labels, None, batch["weight_B"])
  np.testing.assert_allclose(loss, target_only + out["history_loss"], rtol=1e-6)
  h_logits, h_labels, h_weight = extra
  assert h_logits.shape == (5, 3 * 3 - 1, 6) and float(h_weight.sum()) == 3 * MASK.sum() - 5
  # labels are the next history codes of their levels
  np.testing.assert_array_equal(np.asarray(h_labels[0]),
                                np.asarray(codes[HIST[0]]).reshape(-1)[1:])
  wide = np.where(MASK, HIST, 29)             # padding's ids changed: same loss
  _, out2 = steps.loss_terms(*steps.forward(params, model, _batch(wide, MASK, np.arange(5)),
                                            codes, False), batch["weight_B"])
  np.testing.assert_allclose(out2["history_loss"], out["history_loss"], rtol=1e-5)


def test_rope_is_a_rotation_by_relative_position():
  """Rotary embeddings keep norms, and q.k depends on the positions' difference only."""
  rng = np.random.default_rng(0)
  q, k = (jnp.asarray(rng.normal(size=(1, 1, 8)), jnp.float32) for _ in range(2))
  dot = lambda i, j: float(jnp.sum(rope(q, jnp.array([i]), 100.0) * rope(k, jnp.array([j]), 100.0)))
  np.testing.assert_allclose(dot(3, 1), dot(7, 5), rtol=1e-5)
  assert abs(dot(3, 1) - dot(3, 2)) > 1e-4
  np.testing.assert_allclose(jnp.linalg.norm(rope(q, jnp.array([5]), 100.0)),
                             jnp.linalg.norm(q), rtol=1e-6)


def test_config_variants_and_checks():
  """The decoder variants build, their parameter count is the T5's within 1 %, and a
  method whose losses read the T5's encoder refuses model.kind='decoder'."""
  from jaxrec.recommender import family
  sizes = (64, 64, 64, 32)
  codes = jnp.zeros((4, 4), jnp.int32)
  batch = _batch(np.zeros((1, 3), np.int32), np.ones((1, 3), bool), [0])
  for t5, dec in (("scientific", "scientific_decoder"), ("default", "decoder")):
    counts = []
    for variant in (t5, dec):
      model, rec_steps = family.build(get_config("tiger", variant).model, sizes)
      shapes = jax.eval_shape(lambda: rec_steps.init_params(model, codes, batch,
                                                            jax.random.key(0)))
      counts.append(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)))
    assert abs(counts[1] / counts[0] - 1) < 0.01, (t5, counts)
  cfg = get_config("tiger", "tiny_decoder")
  assert cfg.model.kind == "decoder" and config_problems(cfg) == []
  ete = cfg.copy_and_resolve_references()
  ete.method = "etegrec"
  assert "model.kind='decoder': etegrec runs on t5 only" in " ".join(
      config_problems(ete, "codes", ("level",), ("t5",)))
  bad = cfg.copy_and_resolve_references()
  bad.model.kv_heads, bad.model.mlp = 3, "gelu"
  problems = " ".join(config_problems(bad))
  assert "model.kv_heads=3" in problems and "model.mlp='gelu'" in problems


def test_a_tiny_run_learns_and_writes_the_usual_outputs(trained):
  """tiger:tiny_decoder end to end (code table, training, constrained decoding, the
  results layout); its export is checked with the T5's in test_serve.py."""
  workdir = trained["decoder"]
  for name in ("config.json", "metrics.jsonl", "results.json", "codes.npz"):
    assert os.path.exists(os.path.join(workdir, name)), name
  cfg = json.load(open(os.path.join(workdir, "config.json")))
  assert cfg["model"]["kind"] == "decoder"
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  losses = [l["loss"] for l in lines if "loss" in l]
  assert losses[-1] < losses[0], losses
  results = json.load(open(os.path.join(workdir, "results.json")))
  for split in ("valid", "test"):
    assert 0.0 < results[split]["recall@10"] <= 1.0
    assert results[split]["recall@10"] >= results[split]["recall@5"]
