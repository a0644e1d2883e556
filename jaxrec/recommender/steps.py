"""The T5 recommender's pure steps: code loss, train step, its decoding step functions,
generation and the evaluation step.

Batches carry item ids; ids become codes here, on device, through the current code table
(an argument, not a constant), so methods that re-tokenize during training reuse every
compiled step.

Shape letters: B batch, L history items, C code levels, K codes, N items, W beams.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from jaxrec import decode, metrics
from jaxrec.optim import TrainState, apply_step
from jaxrec.recommender.t5 import T5, empty_cache, eos_logp, level_logp
from jaxrec.recommender.t5_layers import T5Config
from jaxrec.xla import jit_init


def history_tokens(codes_NxC, history_BxL, mask_BxL, cfg: T5Config):
  """Flattened encoder tokens [B, L*C] (embedding rows) and their mask; with the "vocab"
  head [B, L*C + 1], EOS right after the last real code (histories are left-aligned), as
  the T5 tokenizer ends LETTER-TIGER's input text. With `item_tokens='sum'`: the rows
  [B, L, C] of each item's codes (`T5.encode` sums them: one position per item) and the
  items' mask [B, L]."""
  b, l = history_BxL.shape
  c = codes_NxC.shape[1]
  tok = codes_NxC[history_BxL] + jnp.asarray(cfg.offsets, jnp.int32)
  if cfg.item_tokens == "sum":
    return tok, mask_BxL
  tok = tok.reshape(b, l * c)
  mask = jnp.broadcast_to(mask_BxL[:, :, None], (b, l, c)).reshape(b, l * c)
  if cfg.full_vocab:
    pos = jnp.arange(l * c + 1)[None, :]
    end = jnp.sum(mask, axis=1, keepdims=True)          # the first padded position
    tok = jnp.where(pos == end, cfg.eos, jnp.pad(tok, ((0, 0), (0, 1))))
    mask = pos <= end
  return tok, mask


def decoder_io(codes_NxC, target_B, cfg: T5Config):
  """Teacher-forcing inputs [BOS, c_0 .. c_{C-2}] (embedding rows) and labels [B, C] (level
  codes); with the "vocab" head inputs [BOS, c_0 .. c_{C-1}] and labels [B, C + 1]: the
  codes' rows, then EOS; with the "items" head inputs [BOS] and labels [B, 1], the
  target items."""
  bos = jnp.full((target_B.shape[0], 1), cfg.bos, jnp.int32)
  if cfg.items_head:
    return bos, target_B[:, None]
  codes = codes_NxC[target_B]
  rows = codes + jnp.asarray(cfg.offsets, jnp.int32)
  if cfg.full_vocab:
    eos = jnp.full((codes.shape[0], 1), cfg.eos, jnp.int32)
    return jnp.concatenate([bos, rows], axis=1), jnp.concatenate([rows, eos], axis=1)
  return jnp.concatenate([bos, rows[:, :-1]], axis=1), codes


def forward(params, model: T5, batch, codes_NxC, train: bool, key=None):
  """Teacher-forced forward pass: (logits [B, C, K], labels [B, C]); with the "vocab" head
  (logits [B, C + 1, V], labels [B, C + 1]); with the "items" head (logits [B, 1, N], the
  target items [B, 1])."""
  cfg = model.cfg
  tokens, mask = history_tokens(codes_NxC, batch["history_BxL"], batch["mask_BxL"], cfg)
  dec_in, labels = decoder_io(codes_NxC, batch["target_B"], cfg)
  rngs = {"dropout": key} if train else {}
  hidden = model.apply(params, tokens, mask, batch["user_B"], dec_in, train, rngs=rngs)
  if cfg.items_head:
    return model.apply(params, hidden[:, 0], codes_NxC, method=T5.item_logits)[:, None], labels
  return model.apply(params, hidden, method=T5.logits), labels


def splits(batch, short: tuple) -> bool:
  """Whether `short` = (rows, length) splits a batch of this shape (`teacher_forced_states`):
  fewer rows than the batch's, padded to fewer items than its length."""
  n_rows, n_items = batch["history_BxL"].shape
  return bool(short) and 0 < short[0] < n_rows and short[1] < n_items


def short_fits(batch, short: tuple):
  """(traced) Whether the batch's `rows` shortest histories all fit in `length` items."""
  rows, length = short[:2]
  return jnp.sort(jnp.sum(batch["mask_BxL"], axis=1))[rows - 1] <= length


def teacher_forced_states(params, model: T5, batch, codes_NxC, train: bool, keys,
                          short: tuple = ()):
  """(encoder states mean-pooled over each history's real positions [B, D], teacher-forced
  decoder states [B, C, D]) of a batch; `keys` the encoder's and decoder's dropout keys.

  `short` = (rows, length[, sharding]) (when it `splits` the batch): the batch's `rows`
  shortest histories run as a part of their own, padded to `length` items, the other rows as
  a second part at the batch's length. When those rows all fit (`short_fits`: the caller's check,
  outside the gradient, so that a `lax.cond` between the two ways keeps one way's
  activations, not both), every real position computes what it would in the whole batch
  (padded keys are masked out; relative positions start at each history's first item): the
  same states up to float rounding, at a fraction of the cost when i.i.d. batches are padded
  to their longest history; only the dropout draws differ. `sharding` (the batch's): where
  each part's rows go, as the batch's are split over a mesh's devices."""
  cfg = model.cfg

  def run(b, k_enc, k_dec):
    tokens, mask = history_tokens(codes_NxC, b["history_BxL"], b["mask_BxL"], cfg)
    dec_in, _ = decoder_io(codes_NxC, b["target_B"], cfg)
    enc, enc_mask = model.apply(params, tokens, mask, b["user_B"], train, method=T5.encode,
                                rngs={"dropout": k_enc} if train else {})
    hidden = model.apply(params, enc, enc_mask, dec_in, train, method=T5.decode,
                         rngs={"dropout": k_dec} if train else {})
    m = enc_mask.astype(enc.dtype)[..., None]
    return jnp.sum(enc * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0), hidden

  if not splits(batch, short):
    return run(batch, *keys)
  rows, length = short[:2]
  order = jnp.argsort(jnp.sum(batch["mask_BxL"], axis=1), stable=True)
  fields = ("history_BxL", "mask_BxL", "target_B", "user_B")
  a = {f: jnp.asarray(batch[f])[order[:rows]] for f in fields}
  a["history_BxL"], a["mask_BxL"] = a["history_BxL"][:, :length], a["mask_BxL"][:, :length]
  b = {f: jnp.asarray(batch[f])[order[rows:]] for f in fields}
  if len(short) > 2:     # each part split over the devices as the batch is (else XLA may
    a, b = (jax.lax.with_sharding_constraint(p, short[2]) for p in (a, b))  # run it whole)
  out = [run(part, *(jax.random.fold_in(k, i) for k in keys)) for i, part in enumerate((a, b))]
  inverse = jnp.argsort(order)
  return tuple(jnp.concatenate(x, axis=0)[inverse] for x in zip(*out))


def code_loss(logits_BxCxK, labels_BxC, weight_B, tau: float = 1.0):
  """Cross-entropy on logits / tau (tau = 1: plain CE; LETTER's ranking-guided loss uses
  tau != 1), averaged over real samples and levels. Returns (loss, metrics)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits_BxCxK / tau, labels_BxC)
  denom = jnp.maximum(jnp.sum(weight_B), 1.0) * labels_BxC.shape[1]
  loss = jnp.sum(ce * weight_B[:, None]) / denom
  exact = jnp.all(jnp.argmax(logits_BxCxK, -1) == labels_BxC, axis=1)
  acc = jnp.sum(exact * weight_B) / jnp.maximum(jnp.sum(weight_B), 1.0)
  return loss, {"loss": loss, "id_accuracy": acc}


def train_step(state: TrainState, batch, codes_NxC, key, *, model: T5, tx, tau: float = 1.0):
  """One AdamW step on the code loss; dropout key = fold_in(key, step)."""
  step_key = jax.random.fold_in(key, state.step)

  def loss_fn(params):
    return batch_loss(params, batch, codes_NxC, step_key, model=model, tau=tau)

  return apply_step(state, loss_fn, tx)


def loss_sums(params, batch, codes_NxC, tables, *, model: T5):
  """Teacher-forced cross-entropy of a batch in inference mode: (sum over real samples of
  their mean over levels, number of real samples)."""
  del tables
  logits, labels = forward(params, model, batch, codes_NxC, False)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(-1)
  return jnp.sum(ce * batch["weight_B"]), jnp.sum(batch["weight_B"])


def init_params(model: T5, codes_NxC, batch, key):
  """The T5's parameters, initialised on `batch`'s shapes (history_BxL, mask_BxL, user_B,
  target_B) through the code table."""
  tok, mask = history_tokens(codes_NxC, batch["history_BxL"], batch["mask_BxL"], model.cfg)
  dec_in, _ = decoder_io(codes_NxC, batch["target_B"], model.cfg)
  return jit_init(model, {"params": key}, tok, mask, batch["user_B"], dec_in, train=False)


def trainable(model: T5):
  """Every parameter of the T5 trains (`decoder_steps.trainable` has the LoRA case)."""
  del model
  return None


def t5_step_fns(model: T5, params, head, cross_kv, enc_mask_T):
  """The T5's `(step_fn, eos_fn)` for `decode.search` (or any search that starts from
  `empty_cache` and calls levels 0, 1, ... in order), for one user. The state is the
  decoder's key/value cache of the positions after BOS: BOS is the same for every beam, so
  its position is decoded once, here, and its keys/values stay one [1, H, E] row per layer
  that every beam's attention broadcasts (never copied into, or reordered with, the
  beams' caches). `eos_fn` is the "vocab" head's EOS term after the last code."""
  cfg = model.cfg

  def run(tokens, cache):
    return model.apply(params, tokens, cache, cross_kv, enc_mask_T, method=T5.decode_step)

  root_hidden, bos = run(jnp.full((1,), cfg.bos, jnp.int32), empty_cache(cfg))
  root_logp = level_logp(cfg, root_hidden, head, 0)

  def with_bos(cache):
    return [(bk + ck, bv + cv) for (bk, bv), (ck, cv) in zip(bos, cache)]

  def step_fn(cache, tokens, level):
    if level == 0:
      return root_logp, cache
    hidden, cache = run(tokens, with_bos(cache))
    return level_logp(cfg, hidden, head, level), [(k[1:], v[1:]) for k, v in cache]

  def eos_fn(cache, tokens):
    return eos_logp(cfg, run(tokens, with_bos(cache))[0], head)

  return step_fn, eos_fn


def _beam_search_one(model: T5, params, head, cross_kv, enc_mask_T, tables, beam: int,
                     constrained: bool):
  """T5 decoding for one user (`t5_step_fns`)."""
  cfg = model.cfg
  step_fn, eos_fn = t5_step_fns(model, params, head, cross_kv, enc_mask_T)
  return decode.beam_search(step_fn, empty_cache(cfg), tables, cfg.level_sizes, cfg.offsets,
                            cfg.bos, beam, constrained, eos_fn if cfg.full_vocab else None)


@functools.partial(jax.jit, static_argnames=("model", "beam", "constrained"))
def generate(params, tokens_BxT, mask_BxT, user_B, tables: decode.PrefixTables, *, model: T5,
             beam: int, constrained: bool = True):
  """Encodes a batch once and beam-searches every user: (items [B, W], scores [B, W]);
  `constrained=False`: over the whole code space, item -1 for IDs no item has."""
  enc, enc_mask = model.apply(params, tokens_BxT, mask_BxT, user_B, False, method=T5.encode)
  cross = model.apply(params, enc, method=T5.cross_kv)  # once per user, for all beams
  head = model.apply(params, method=T5.output_head)
  one = functools.partial(_beam_search_one, model, params, head, tables=tables, beam=beam,
                          constrained=constrained)
  return jax.vmap(one)(cross, enc_mask)


def item_scores(params, tokens_BxT, mask_BxT, user_B, codes_NxC, *, model: T5):
  """The "items" head's log-probabilities of every item after each history [B, N]."""
  enc, enc_mask = model.apply(params, tokens_BxT, mask_BxT, user_B, False, method=T5.encode)
  bos = jnp.full((enc.shape[0], 1), model.cfg.bos, jnp.int32)
  hidden = model.apply(params, enc, enc_mask, bos, False, method=T5.decode)[:, 0]
  return jax.nn.log_softmax(model.apply(params, hidden, codes_NxC, method=T5.item_logits), -1)


def ranked(params, tokens_BxT, mask_BxT, user_B, codes_NxC, tables, *, model: T5, beam: int,
           constrained: bool):
  """The best `beam` items after each history (items [B, W], scores [B, W]): the beam search,
  or with the "items" head the top of its full ranking."""
  if model.cfg.items_head:
    scores, items = jax.lax.top_k(item_scores(params, tokens_BxT, mask_BxT, user_B, codes_NxC,
                                              model=model), beam)
    return items, scores
  return generate(params, tokens_BxT, mask_BxT, user_B, tables, model=model, beam=beam,
                  constrained=constrained)


@functools.partial(jax.jit, static_argnames=("model", "beam", "constrained", "k"))
def recommend_step(params, history_BxL, mask_BxL, user_B, codes_NxC, tables, *, model: T5,
                   beam: int, constrained: bool, k: int):
  """The next items after each history, best first: (items [B, k], log-probabilities
  [B, k]) of a beam of width `beam` (k <= beam)."""
  tokens, mask = history_tokens(codes_NxC, history_BxL, mask_BxL, model.cfg)
  items, scores = ranked(params, tokens, mask, user_B, codes_NxC, tables, model=model, beam=beam,
                         constrained=constrained)
  return items[:, :k], scores[:, :k]


def eval_step(params, batch, codes_NxC, tables, *, model: T5, beam: int, constrained: bool = True):
  """Decoding of a batch (constrained to the catalogue, or not: then IDs no item has are
  misses, and err@K counts them) and the metric sums: (sums, items [B, W])."""
  tokens, mask = history_tokens(codes_NxC, batch["history_BxL"], batch["mask_BxL"], model.cfg)
  items, scores = ranked(params, tokens, mask, batch["user_B"], codes_NxC, tables, model=model,
                         beam=beam, constrained=constrained)
  # the target's representative: itself, or with shared IDs the item its ID decodes to (the
  # "items" head ranks items, not IDs: the target itself)
  target = batch["target_B"] if model.cfg.items_head else tables.rep_item_N[batch["target_B"]]
  return metrics.decoded_sums(items, scores, target, batch["weight_B"]), items


# ------------------------------------------- SIIT's task A: input vectors instead of a history
def batch_loss(params, batch, codes_NxC, key, *, model: T5, tau: float = 1.0):
  """The training code loss of a batch: (loss, metrics) (the T5 train step's objective)."""
  logits, labels = forward(params, model, batch, codes_NxC, True, key)
  return code_loss(logits, labels, batch["weight_B"], tau)


def soft_loss(params, x_BxSxD, codes_BxC, key, *, model: T5):
  """Teacher-forced code loss of IDs `codes_BxC` after input vectors (the encoder reads
  them; SIIT's soft item tokens), in training mode."""
  k_enc, k_dec = jax.random.split(key)
  mask = jnp.ones(x_BxSxD.shape[:2], bool)
  enc, enc_mask = model.apply(params, x_BxSxD, mask, None, True, method=T5.encode_inputs,
                              rngs={"dropout": k_enc})
  dec_in, labels = decoder_io(codes_BxC, jnp.arange(codes_BxC.shape[0]), model.cfg)
  hidden = model.apply(params, enc, enc_mask, dec_in, True, method=T5.decode,
                       rngs={"dropout": k_dec})
  return code_loss(model.apply(params, hidden, method=T5.logits), labels,
                   jnp.ones(codes_BxC.shape[0]))[0]


def soft_search(params, x_BxSxD, *, model: T5, beam: int):
  """Beam search over the whole code space after input vectors: (codes [B, W, C], scores)."""
  mask = jnp.ones(x_BxSxD.shape[:2], bool)
  enc, enc_mask = model.apply(params, x_BxSxD, mask, None, False, method=T5.encode_inputs)
  cross = model.apply(params, enc, method=T5.cross_kv)
  head = model.apply(params, method=T5.output_head)
  cfg = model.cfg

  def one(cross_kv, enc_mask_T):        # no prefix tables: every code of every level
    step_fn, _ = t5_step_fns(model, params, head, cross_kv, enc_mask_T)
    codes, scores, _ = decode.search(step_fn, empty_cache(cfg), None, cfg.level_sizes,
                                     cfg.offsets, cfg.bos, beam)
    return codes, scores
  return jax.vmap(one)(cross, enc_mask)


def soft_score(params, x_BxSxD, codes_BxC, *, model: T5):
  """Teacher-forced log-probability [B] of IDs after input vectors (the search's scores)."""
  mask = jnp.ones(x_BxSxD.shape[:2], bool)
  enc, enc_mask = model.apply(params, x_BxSxD, mask, None, False, method=T5.encode_inputs)
  dec_in, labels = decoder_io(codes_BxC, jnp.arange(codes_BxC.shape[0]), model.cfg)
  hidden = model.apply(params, enc, enc_mask, dec_in, False, method=T5.decode)
  logp = jax.nn.log_softmax(model.apply(params, hidden, method=T5.logits), axis=-1)
  return jnp.sum(jnp.take_along_axis(logp, labels[..., None], -1)[..., 0], axis=-1)
