"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over a user's item sequence,
next-item scores as dot products with the (shared) item embedding table.

Architecture as the official code (kang205/SASRec, and its PyTorch port pmixer/SASRec.pytorch):
item embedding * sqrt(d) + learned absolute position, dropout, padding zeroed; per block
  q = LN(x);  x = q + MHA(q, x, x, causal & padding mask);  x = LN(x);  x = x + FFN(x)
(FFN: dropout(W2 relu(dropout(W1 x)))), padding zeroed again; a final LN. Histories are
left-aligned (position 0 = oldest item of the window): train and eval use the same layout.

Losses (`loss`), every position of a sequence a training target as in the paper:
  ce       full softmax cross-entropy over the catalogue (SASRec+ / "CE" of the
           reproducibility literature; default)
  sampled  sampled softmax over `negatives` items drawn uniformly per batch, shared by
           every position (a negative equal to a position's target is masked out);
           uniform proposals need no logQ correction. For catalogues too large for `ce`.
  bce      the paper's binary cross-entropy with one negative per position, drawn uniformly
           from the items other than the target (the official code draws from the items
           not in the user's sequence; with thousands of items the difference is small).
Evaluation ranks the whole catalogue (`lax.top_k` of the last position's scores): the same
leave-one-out splits, Recall@K / NDCG@K as the generative methods.

Item vectors (`item_input`), one table [N, D] for the input and the tied output alike:
  id         a free embedding per item (the paper)
  codes      the sum of one embedding per level of the item's semantic ID (a code table
             [N, C], an argument of every step): no parameter of its own per item, as a
             generative recommender over the same codes reads them (Singh et al., "Better
             Generalization with Semantic IDs", RecSys 2024, replace item ids this way)
  id+codes   both, summed

Shape letters: B batch, L history length, D width, N items, M sampled negatives, R ranked.
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxrec import metrics
from jaxrec.optim import TrainState

LOSSES = ("ce", "sampled", "bce")
ITEM_INPUTS = ("id", "codes", "id+codes")


@dataclasses.dataclass(frozen=True)
class SASRecConfig:
  n_items: int
  max_len: int
  d: int = 64
  blocks: int = 2
  heads: int = 1
  dropout: float = 0.2
  item_input: str = "id"          # ITEM_INPUTS
  level_sizes: tuple = ()         # codes per level of the code table (item_input with codes)

  @property
  def ids(self) -> bool:
    return "id" in self.item_input.split("+")

  @property
  def codes(self) -> bool:
    return "codes" in self.item_input.split("+")


def model_config(m, n_items: int, max_len: int, level_sizes: tuple = ()) -> SASRecConfig:
  """The frozen model config from `config.model` of a SASRec run (`level_sizes`: the code
  table's, when `model.item_input` reads codes)."""
  return SASRecConfig(n_items=n_items, max_len=max_len, d=m.d, blocks=m.blocks, heads=m.heads,
                      dropout=m.dropout, item_input=m.get("item_input", "id"),
                      level_sizes=tuple(level_sizes))


class Block(nn.Module):
  cfg: SASRecConfig

  @nn.compact
  def __call__(self, x_BxLxD, attn_mask, train: bool):
    cfg = self.cfg
    q = nn.LayerNorm(epsilon=1e-8, name="attn_ln")(x_BxLxD)
    a = nn.MultiHeadDotProductAttention(num_heads=cfg.heads, dropout_rate=cfg.dropout,
                                        deterministic=not train, name="attn")(
                                            q, x_BxLxD, mask=attn_mask)
    x = nn.LayerNorm(epsilon=1e-8, name="ffn_ln")(q + a)
    h = nn.Dropout(cfg.dropout, deterministic=not train)(nn.Dense(cfg.d, name="ffn_in")(x))
    h = nn.Dropout(cfg.dropout, deterministic=not train)(nn.Dense(cfg.d, name="ffn_out")(nn.relu(h)))
    return x + h


class SASRec(nn.Module):
  cfg: SASRecConfig

  def setup(self):
    cfg = self.cfg
    init = nn.initializers.xavier_normal()   # the official PyTorch port's init
    if cfg.ids:
      self.item_embed = nn.Embed(cfg.n_items, cfg.d, embedding_init=init)
    if cfg.codes:
      self.code_embed = [nn.Embed(k, cfg.d, embedding_init=init) for k in cfg.level_sizes]
    self.pos_embed = nn.Embed(cfg.max_len, cfg.d, embedding_init=init)
    self.drop = nn.Dropout(cfg.dropout)
    self.blocks = [Block(cfg, name=f"block{i}") for i in range(cfg.blocks)]
    self.final_ln = nn.LayerNorm(epsilon=1e-8)

  def item_table(self, codes_NxC=None):
    """Every item's vector [N, D]: the input and the tied output of the model."""
    table = self.item_embed.embedding if self.cfg.ids else 0.0
    if self.cfg.codes:
      for level, embed in enumerate(self.code_embed):
        table = table + embed(codes_NxC[:, level])
    return table

  def __call__(self, items_BxL, mask_BxL, train: bool, codes_NxC=None):
    """Hidden states [B, L, D]; position t has seen items 0..t of the window."""
    l = items_BxL.shape[1]
    x = self.item_table(codes_NxC)[items_BxL] * (self.cfg.d ** 0.5)
    x = x + self.pos_embed(jnp.arange(l))[None]
    keep = mask_BxL[..., None].astype(x.dtype)
    x = self.drop(x, deterministic=not train) * keep
    attn_mask = nn.combine_masks(nn.make_causal_mask(items_BxL),
                                 nn.make_attention_mask(mask_BxL, mask_BxL))
    for block in self.blocks:
      x = block(x, attn_mask, train) * keep
    return self.final_ln(x)


def sequence_targets(batch):
  """Next-item targets of every position [B, L] and their weights: position t of a window
  predicts item t + 1, the last real position predicts the window's target."""
  hist, mask = batch["history_BxL"], batch["mask_BxL"]
  last = jnp.sum(mask, axis=1) - 1
  pos = jnp.arange(hist.shape[1])[None, :]
  shifted = jnp.concatenate([hist[:, 1:], jnp.zeros_like(hist[:, :1])], axis=1)
  targets = jnp.where(pos == last[:, None], batch["target_B"][:, None], shifted)
  weights = mask.astype(jnp.float32) * batch["weight_B"][:, None]
  return targets, weights


def sampled_softmax(h_BxLxD, table_NxD, targets_BxL, neg_M):
  """-log softmax of the target among [target, negatives] at every position [B, L]; a
  negative equal to the position's target is masked out (with every item as a negative,
  this is the full softmax cross-entropy)."""
  pos = jnp.einsum("bld,bld->bl", h_BxLxD, table_NxD[targets_BxL])
  neg = jnp.einsum("bld,md->blm", h_BxLxD, table_NxD[neg_M])
  neg = jnp.where(neg_M[None, None, :] == targets_BxL[..., None], -jnp.inf, neg)
  logits = jnp.concatenate([pos[..., None], neg], axis=-1)
  return -jax.nn.log_softmax(logits, axis=-1)[..., 0]


def other_items(key, targets, n: int):
  """One item per entry, uniform over the n - 1 items that are not the target."""
  return (targets + 1 + jax.random.randint(key, targets.shape, 0, n - 1)) % n


def item_table(params, *, model: SASRec, codes_NxC=None):
  """Every item's vector [N, D] (`SASRec.item_table`)."""
  return model.apply(params, codes_NxC, method=SASRec.item_table)


def loss_fn(params, batch, key, *, model: SASRec, loss: str, negatives: int, codes_NxC=None):
  """Mean loss over the real positions of the batch: (loss, metrics)."""
  k_drop, k_neg = jax.random.split(key)
  h_BxLxD = model.apply(params, batch["history_BxL"], batch["mask_BxL"], True, codes_NxC,
                        rngs={"dropout": k_drop})
  table_NxD = item_table(params, model=model, codes_NxC=codes_NxC)
  targets_BxL, w_BxL = sequence_targets(batch)
  n = table_NxD.shape[0]
  if loss == "ce":
    logits = jnp.einsum("bld,nd->bln", h_BxLxD, table_NxD)
    per_pos = optax.softmax_cross_entropy_with_integer_labels(logits, targets_BxL)
  elif loss == "sampled":
    neg_M = jax.random.randint(k_neg, (negatives,), 0, n)
    per_pos = sampled_softmax(h_BxLxD, table_NxD, targets_BxL, neg_M)
  elif loss == "bce":
    neg_BxL = other_items(k_neg, targets_BxL, n)
    pos = jnp.einsum("bld,bld->bl", h_BxLxD, table_NxD[targets_BxL])
    neg = jnp.einsum("bld,bld->bl", h_BxLxD, table_NxD[neg_BxL])
    per_pos = -jax.nn.log_sigmoid(pos) - jax.nn.log_sigmoid(-neg)
  else:
    raise ValueError(f"sasrec loss must be one of {LOSSES}, got {loss!r}")
  value = jnp.sum(per_pos * w_BxL) / jnp.maximum(jnp.sum(w_BxL), 1.0)
  return value, {"loss": value}


def train_step(state: TrainState, batch, key, *, model: SASRec, tx, loss: str, negatives: int,
               codes_NxC=None):
  """One optimizer step; dropout and negatives from fold_in(key, step)."""
  step_key = jax.random.fold_in(key, state.step)
  (_, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, batch, step_key, model=model, loss=loss, negatives=negatives,
      codes_NxC=codes_NxC)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  out["grad_norm"] = optax.tree.norm(grads)
  return TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state), out


def scores(params, batch, *, model: SASRec, codes_NxC=None):
  """Scores of every item after each history [B, N] (the last real position's state)."""
  h_BxLxD = model.apply(params, batch["history_BxL"], batch["mask_BxL"], False, codes_NxC)
  last = jnp.maximum(jnp.sum(batch["mask_BxL"], axis=1) - 1, 0)
  h_BxD = jnp.take_along_axis(h_BxLxD, last[:, None, None], axis=1)[:, 0]
  return h_BxD @ item_table(params, model=model, codes_NxC=codes_NxC).T


@functools.partial(jax.jit, static_argnames=("model", "k"))
def recommend_step(params, history_BxL, mask_BxL, user_B, *, model: SASRec, k: int,
                   codes_NxC=None):
  """The top-k items of the full ranking after each history: (items [B, k], scores)."""
  del user_B                       # SASRec has no user token
  scores_BxN = scores(params, {"history_BxL": history_BxL, "mask_BxL": mask_BxL}, model=model,
                      codes_NxC=codes_NxC)
  top, items = jax.lax.top_k(scores_BxN, k)
  return items, top


def eval_step(params, batch, *, model: SASRec, k: int, codes_NxC=None):
  """Full ranking over the catalogue: (metric sums, top-k items [B, k])."""
  _, top_BxR = jax.lax.top_k(scores(params, batch, model=model, codes_NxC=codes_NxC), k)
  return metrics.rank_metric_sums(top_BxR, batch["target_B"], batch["weight_B"]), top_BxR
