"""The decoder-only recommender's pure steps, with the T5's signatures
(`recommender.steps`): the code loss, train step, init, its decoding step functions,
generation and the evaluation step, so that a method's plan and the loop run either model
(`config.model.kind`, `recommender.family`).

One sequence per sample: [user] history codes (left-aligned, padding after), BOS, the
target's codes but the last; the positions from BOS on predict the target's codes.

Shape letters: B batch, L history items, C code levels, K codes, N items, S sequence,
W beams.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec import decode, metrics
from jaxrec.optim import TrainState, apply_step
from jaxrec.recommender import hf
from jaxrec.recommender.decoder import Decoder, DecoderConfig, empty_cache
from jaxrec.recommender.steps import code_loss
from jaxrec.xla import jit_init


def prefix_tokens(codes_NxC, history_BxL, mask_BxL, cfg: DecoderConfig):
  """The prefix: the prompt's head, the history items' codes (embedding rows) joined by the
  prompt's separator, then its tail (BOS for the from-scratch model): tokens
  [B, |head| + L (C + |sep|) - |sep| + |tail|] and mask (padded items masked; histories are
  left-aligned, so the first item is real and the separators before padding are masked)."""
  b, l = history_BxL.shape
  c, n_sep = codes_NxC.shape[1], len(cfg.prompt_sep)
  rows = codes_NxC[history_BxL] + jnp.asarray(cfg.offsets, jnp.int32)   # [B, L, C]
  sep = jnp.broadcast_to(jnp.asarray(cfg.prompt_sep, jnp.int32), (b, l, n_sep))
  w = c + n_sep
  tok = jnp.concatenate([sep, rows], -1).reshape(b, l * w)[:, n_sep:]
  mask = jnp.broadcast_to(mask_BxL[:, :, None], (b, l, w)).reshape(b, l * w)[:, n_sep:]
  head, tail = (jnp.broadcast_to(jnp.asarray(t, jnp.int32), (b, len(t)))
                for t in (cfg.prompt_head, cfg.tail))
  ones = lambda t: jnp.ones(t.shape, mask.dtype)
  return (jnp.concatenate([head, tok, tail], 1),
          jnp.concatenate([ones(head), mask, ones(tail)], 1))


def sequence(codes_NxC, batch, cfg: DecoderConfig):
  """Teacher-forcing tokens [B, T + C - 1] and mask: the prefix, then the target's codes
  but the last; and the target's codes [B, C]."""
  tok, mask = prefix_tokens(codes_NxC, batch["history_BxL"], batch["mask_BxL"], cfg)
  codes = codes_NxC[batch["target_B"]]
  rows = codes[:, :-1] + jnp.asarray(cfg.offsets[:-1], jnp.int32)
  return (jnp.concatenate([tok, rows], 1),
          jnp.concatenate([mask, jnp.ones(rows.shape, mask.dtype)], 1), codes)


def forward(params, model: Decoder, batch, codes_NxC, train: bool, key=None):
  """Teacher-forced pass: (target logits [B, C, K], labels [B, C], and with loss 'all' the
  history's next-code (logits [B, L*C - 1, K], labels, weights), else None). With loss
  'lm': (logits over the whole vocabulary [B, C + 1, V], the target's code tokens and EOS
  [B, C + 1], "lm")."""
  cfg = model.cfg
  rngs = {"dropout": key} if train else {}
  if cfg.loss == "lm":
    tok, mask = prefix_tokens(codes_NxC, batch["history_BxL"], batch["mask_BxL"], cfg)
    ids = codes_NxC[batch["target_B"]] + jnp.asarray(cfg.offsets, jnp.int32)
    tokens = jnp.concatenate([tok, ids], 1)
    mask = jnp.concatenate([mask, jnp.ones(ids.shape, mask.dtype)], 1)
    hidden, _, _ = model.apply(params, tokens, mask, batch["user_B"], train, rngs=rngs)
    logits = model.apply(params, hidden[:, -cfg.levels - 1:], method=Decoder.vocab_logits)
    eos = jnp.full(ids.shape[:1] + (1,), cfg.eos, jnp.int32)
    return logits, jnp.concatenate([ids, eos], 1), "lm"
  tokens, mask, target = sequence(codes_NxC, batch, cfg)
  hidden, _, _ = model.apply(params, tokens, mask, batch["user_B"], train, rngs=rngs)
  c = cfg.levels
  hist = tokens.shape[1] - c                                # L*C history positions
  start = hidden.shape[1] - c                               # BOS's position
  logits = model.apply(params, hidden[:, start:], np.arange(c), method=Decoder.logits)
  if cfg.loss != "all":
    return logits, target, None
  if cfg.prompt_head or cfg.prompt_sep or cfg.prompt_tail:
    raise ValueError("model.loss='all' is for the codes-only sequence (no prompt tokens)")
  h0 = start - hist                                         # 1 with a user token
  levels = (np.arange(1, hist) % c)
  hist_logits = model.apply(params, hidden[:, h0:h0 + hist - 1], levels, method=Decoder.logits)
  labels = tokens[:, 1:hist] - jnp.asarray(cfg.offsets, jnp.int32)[levels]
  weight = mask[:, 1:hist].astype(jnp.float32)
  return logits, target, (hist_logits, labels, weight)


def loss_terms(logits, labels, extra, weight_B, tau: float = 1.0):
  """The code loss on the target's codes (as the T5's), plus with loss 'all' the mean
  next-code cross-entropy over the history's real codes; with loss 'lm', the mean
  cross-entropy over the vocabulary of the target's code tokens and EOS (its id_accuracy:
  the codes' argmax over the vocabulary)."""
  loss, out = code_loss(logits, labels, weight_B, tau)
  if isinstance(extra, str):        # "lm": the accuracy of the codes, not of EOS
    out["id_accuracy"] = code_loss(logits[:, :-1], labels[:, :-1], weight_B)[1]["id_accuracy"]
  elif extra is not None:
    h_logits, h_labels, h_weight = extra
    ce = optax.softmax_cross_entropy_with_integer_labels(h_logits / tau, h_labels)
    h_weight = h_weight * weight_B[:, None]
    out["history_loss"] = jnp.sum(ce * h_weight) / jnp.maximum(jnp.sum(h_weight), 1.0)
    loss = loss + out["history_loss"]
    out["loss"] = loss
  return loss, out


def train_step(state: TrainState, batch, codes_NxC, key, *, model: Decoder, tx, tau: float = 1.0):
  """One AdamW step on the code loss; dropout key = fold_in(key, step)."""
  step_key = jax.random.fold_in(key, state.step)
  mask = trainable(model)

  def loss_fn(params):
    if mask is not None:    # frozen parameters: no gradient is computed for them at all
      params = jax.tree.map(lambda t, p: p if t else jax.lax.stop_gradient(p), mask(params), params)
    return batch_loss(params, batch, codes_NxC, step_key, model=model, tau=tau)

  return apply_step(state, loss_fn, tx)


def loss_sums(params, batch, codes_NxC, tables, *, model: Decoder):
  """Teacher-forced cross-entropy of the target's codes in inference mode: (sum over real
  samples of their mean over levels, number of real samples)."""
  del tables
  logits, labels, _ = forward(params, model, batch, codes_NxC, False)   # (loss 'lm': with EOS)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(-1)
  return jnp.sum(ce * batch["weight_B"]), jnp.sum(batch["weight_B"])


def init_params(model: Decoder, codes_NxC, batch, key):
  """The decoder's parameters, initialised on `batch`'s shapes through the code table; a
  pretrained LLM's (`cfg.path`) from its folder, the ID rows and adapters initialised."""
  tokens, mask, _ = sequence(codes_NxC, batch, model.cfg)
  params = jit_init(model, {"params": key}, tokens, mask, batch["user_B"], train=False)
  if model.cfg.path:
    seed = int(jax.random.randint(key, (), 0, 2 ** 31 - 1))
    params = jax.tree.map(jnp.asarray, hf.pretrained_params(model.cfg, params, seed))
  mask = trainable(model)
  if mask is not None and model.cfg.compute == jnp.bfloat16:
    # LoRA in bf16: the frozen weights are stored in bf16 (half the memory), the trained
    # ones (adapters, rows) stay float32 master copies
    params = jax.tree.map(lambda t, p: p if t else p.astype(jnp.bfloat16), mask(params), params)
  return params


def trainable(model: Decoder):
  """Which parameters train (a function of the parameter tree to a tree of bools), or None
  for all: with LoRA the adapters, the ID rows, the user rows and, with train_rows='all',
  the pretrained embedding and output rows."""
  c = model.cfg
  if not c.lora_rank:
    return None
  names = {"lora_a", "lora_b", "id_embed", "id_head", "user_embed"}
  if c.train_rows == "all":
    names |= {"embed", "lm_head"}

  def train(path, _):
    return str(getattr(path[-1], "key", path[-1])) in names
  return lambda params: jax.tree_util.tree_map_with_path(train, params)


def step_fns(model: Decoder, params, tables_CxKxD, root_hidden_D, prefix_kv, prefix_bias_T,
             pos0, vocab_VxD=None):
  """`step_fn` for `decode.search` for one user, after the prefix pass: level 0's
  log-probabilities come from the prefix's last (BOS) position; each later level decodes
  one position (position pos0 + level - 1) over the prefix and the cached positions.
  With `vocab_VxD` (loss 'lm') a level's codes have their log-probabilities over the whole
  vocabulary, as LC-Rec's constrained beam scores them (its final EOS left out)."""
  cfg = model.cfg
  j = jnp.arange(cfg.k_max)

  def logp(hidden_WxD, level):
    h = hidden_WxD * cfg.logit_mult
    logits = jnp.where(j < cfg.level_sizes[level],
                       (h @ tables_CxKxD[level].T).astype(jnp.float32), -jnp.inf)
    if vocab_VxD is None:
      return jax.nn.log_softmax(logits, -1)
    return logits - jax.nn.logsumexp((h @ vocab_VxD.T).astype(jnp.float32), -1, keepdims=True)

  root = logp(root_hidden_D[None], 0)

  def step_fn(cache, tokens, level):
    if level == 0:
      return root, cache
    hidden, cache = model.apply(params, tokens, pos0 + level - 1, cache, prefix_kv,
                                prefix_bias_T, method=Decoder.decode_step)
    return logp(hidden, level), cache

  return step_fn


@functools.partial(jax.jit, static_argnames=("model", "beam", "constrained"))
def generate(params, tokens_BxT, mask_BxT, user_B, tables: decode.PrefixTables, *,
             model: Decoder, beam: int, constrained: bool = True):
  """Runs every user's prefix once and beam-searches: (items [B, W], scores [B, W])."""
  cfg = model.cfg
  root, kvs, bias, pos0 = model.apply(params, tokens_BxT, mask_BxT, user_B,
                                      method=Decoder.prefix)
  out_tables = model.apply(params, method=Decoder.level_tables)
  vocab = (model.apply(params, method=Decoder.output_table).astype(cfg.compute)
           if cfg.loss == "lm" else None)

  def one(root_D, kv, bias_T, p0):
    step_fn = step_fns(model, params, out_tables, root_D, kv, bias_T, p0, vocab)
    return decode.beam_search(step_fn, empty_cache(cfg), tables, cfg.level_sizes, cfg.offsets,
                              cfg.bos, beam, constrained)
  return jax.vmap(one)(root, kvs, bias, pos0)


@functools.partial(jax.jit, static_argnames=("model", "beam", "constrained", "k"))
def recommend_step(params, history_BxL, mask_BxL, user_B, codes_NxC, tables, *,
                   model: Decoder, beam: int, constrained: bool, k: int):
  """The next items after each history, best first: (items [B, k], log-probabilities)."""
  tokens, mask = prefix_tokens(codes_NxC, history_BxL, mask_BxL, model.cfg)
  items, scores = generate(params, tokens, mask, user_B, tables, model=model, beam=beam,
                           constrained=constrained)
  return items[:, :k], scores[:, :k]


def eval_step(params, batch, codes_NxC, tables, *, model: Decoder, beam: int,
              constrained: bool = True):
  """Decoding of a batch and the metric sums: (sums, items [B, W]) (as the T5's)."""
  tokens, mask = prefix_tokens(codes_NxC, batch["history_BxL"], batch["mask_BxL"], model.cfg)
  items, scores = generate(params, tokens, mask, batch["user_B"], tables, model=model,
                           beam=beam, constrained=constrained)
  return metrics.decoded_sums(items, scores, tables.rep_item_N[batch["target_B"]],
                              batch["weight_B"]), items


def batch_loss(params, batch, codes_NxC, key, *, model: Decoder, tau: float = 1.0):
  """The training loss of a batch: (loss, metrics) (the train step's objective): the code
  loss, plus each `data.align` task's mean loss over its A items weighted A / B (every
  alignment sample weighs as one sequential one, as in LC-Rec's mixed batches)."""
  logits, labels, extra = forward(params, model, batch, codes_NxC, True, key)
  loss, out = loss_terms(logits, labels, extra, batch["weight_B"], tau)
  for task, value in align_losses(params, model, batch, codes_NxC, True,
                                  jax.random.fold_in(key, 3)).items():
    out[task] = value
    loss = loss + value * (batch[f"{task}_item_A"].shape[0] / batch["weight_B"].shape[0])
  return loss, dict(out, loss=loss)


# ------------------------------------------- data.align's item-ID tasks (jaxrec/data/align.py)
def align_losses(params, model: Decoder, batch, codes_NxC, train: bool, key=None) -> dict:
  """The mean loss of each alignment task in the batch: {task: loss}. item2index: the code
  loss of the item's ID after its title prompt; index2item: the next-token cross-entropy
  over the whole vocabulary of the title and EOS after the ID prompt (LC-Rec's LM loss)."""
  cfg, c = model.cfg, model.cfg.levels
  offsets = jnp.asarray(cfg.offsets, jnp.int32)
  rngs = lambda i: {"dropout": jax.random.fold_in(key, i)} if train else {}
  out = {}
  if "item2index_item_A" in batch:
    codes = codes_NxC[batch["item2index_item_A"]]
    tail = batch["item2index_tail_AxP"]
    tok = jnp.concatenate([batch["item2index_tokens_AxX"], tail, codes[:, :-1] + offsets[:-1]], 1)
    mask = jnp.concatenate([batch["item2index_mask_AxX"],
                            jnp.ones((tok.shape[0], tail.shape[1] + c - 1), bool)], 1)
    hidden, _, _ = model.apply(params, tok, mask, None, train, rngs=rngs(0))
    logits = model.apply(params, hidden[:, -c:], np.arange(c), method=Decoder.logits)
    out["item2index"] = code_loss(logits, codes, jnp.ones(codes.shape[0]))[0]
  if "index2item_item_A" in batch:
    head, rest = batch["index2item_head_AxP"], batch["index2item_tokens_AxX"]
    ids = codes_NxC[batch["index2item_item_A"]] + offsets
    tok = jnp.concatenate([head, ids, rest[:, :-1]], 1)
    mask = jnp.concatenate([jnp.ones(head.shape[:1] + (head.shape[1] + c,), bool),
                            batch["index2item_mask_AxX"][:, :-1]], 1)
    hidden, _, _ = model.apply(params, tok, mask, None, train, rngs=rngs(1))
    logits = model.apply(params, hidden[:, head.shape[1] + c - 1:], method=Decoder.vocab_logits)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, rest)
    w = batch["index2item_label_AxX"].astype(jnp.float32)
    out["index2item"] = jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)
  return out


# ------------------------------------------- SIIT's task A: input vectors instead of a history
def _soft_sequence(params, model: Decoder, x_BxSxD, codes_BxC):
  """Input vectors, the prefix's tail (BOS; an LLM's prompt tail), then the codes but the
  last: (vectors, mask)."""
  cfg = model.cfg
  b = x_BxSxD.shape[0]
  rows = jnp.concatenate([jnp.broadcast_to(jnp.asarray(cfg.tail, jnp.int32), (b, len(cfg.tail))),
                          codes_BxC[:, :-1] + jnp.asarray(cfg.offsets[:-1], jnp.int32)], 1)
  x = jnp.concatenate([x_BxSxD.astype(cfg.compute),
                       model.apply(params, rows, method=Decoder.embed_rows)], 1)
  return x, jnp.ones(x.shape[:2], bool)


def soft_logits(params, model, x_BxSxD, codes_BxC, train: bool, key=None):
  x, mask = _soft_sequence(params, model, x_BxSxD, codes_BxC)
  rngs = {"dropout": key} if train else {}
  hidden, _, _ = model.apply(params, x, mask, train, method=Decoder.run, rngs=rngs)
  c = model.cfg.levels
  return model.apply(params, hidden[:, -c:], np.arange(c), method=Decoder.logits)


def soft_loss(params, x_BxSxD, codes_BxC, key, *, model: Decoder):
  """Teacher-forced code loss of IDs `codes_BxC` after input vectors (SIIT's soft item
  tokens, then the prompt's tail), in training mode."""
  logits = soft_logits(params, model, x_BxSxD, codes_BxC, True, key)
  return code_loss(logits, codes_BxC, jnp.ones(codes_BxC.shape[0]))[0]


def soft_search(params, x_BxSxD, *, model: Decoder, beam: int):
  """Beam search over the whole code space after input vectors: (codes [B, W, C], scores)."""
  cfg = model.cfg
  b = x_BxSxD.shape[0]
  tail = model.apply(params, jnp.broadcast_to(jnp.asarray(cfg.tail, jnp.int32), (b, len(cfg.tail))),
                     method=Decoder.embed_rows)
  x = jnp.concatenate([x_BxSxD.astype(cfg.compute), tail], 1)
  root, kvs, bias, pos0 = model.apply(params, x, jnp.ones(x.shape[:2], bool),
                                      method=Decoder.prefix_vectors)
  out_tables = model.apply(params, method=Decoder.level_tables)

  def one(root_D, kv, bias_T, p0):     # no prefix tables: every code of every level
    step_fn = step_fns(model, params, out_tables, root_D, kv, bias_T, p0)
    codes, scores, _ = decode.search(step_fn, empty_cache(cfg), None, cfg.level_sizes,
                                     cfg.offsets, cfg.bos, beam)
    return codes, scores
  return jax.vmap(one)(root, kvs, bias, pos0)


def soft_score(params, x_BxSxD, codes_BxC, *, model: Decoder):
  """Teacher-forced log-probability [B] of IDs after input vectors (the search's scores)."""
  logp = jax.nn.log_softmax(soft_logits(params, model, x_BxSxD, codes_BxC, False), axis=-1)
  return jnp.sum(jnp.take_along_axis(logp, codes_BxC[..., None], -1)[..., 0], axis=-1)
