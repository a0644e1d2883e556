"""RQ-VAE: MLP encoder, residual quantizer, mirrored MLP decoder (Flax Linen).

Shape letters: B batch, F input feature width, D code width, C levels, K codebook size.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.tokenizer.rq import RQOutput, masked_mean, residual_quantize


@dataclasses.dataclass(frozen=True)
class RQVAEConfig:
  """Static (hashable) tokenizer architecture, built from `config.tokenizer`."""
  in_dim: int
  hidden: tuple[int, ...] = (512, 256, 128)   # encoder widths before the code layer
  code_dim: int = 32
  levels: int = 3
  codebook_size: int = 256
  dropout: float = 0.0
  beta: float = 0.25
  modes: tuple[str, ...] = ("hard", "hard", "hard")
  level_reduce: str = "mean"
  residual_grad: str = "stop"
  gumbel_tau: float = 1.0
  sinkhorn_eps: float = 0.003
  sinkhorn_iters: int = 50
  init: str = "flax"       # the MLPs' kernels: flax (lecun normal) | xavier (normal; bias 0)


# The official LETTER tokenizer's encoder widths for any input (RQ-VAE/main.py:47, the
# released scripts do not change them): 32-d SASRec inputs too.
LETTER_WIDTHS = (2048, 1024, 512, 256, 128, 64)


def halving_widths(in_dim: int, code_dim: int) -> tuple[int, ...]:
  """Widths halving from the input down to the code width (4096 -> 2048 -> ... -> 64 -> 32
  for LLaMA inputs: there the same as LETTER_WIDTHS). For inputs too narrow to halve (e.g.
  32-d SASRec embeddings) it falls back to (256, 128, 64)."""
  widths, w = [], in_dim // 2
  while w > code_dim:
    widths.append(w)
    w //= 2
  return tuple(widths) if len(widths) >= 2 else (256, 128, 64)


PRESETS = {
    # TIGER: in -> 512 -> 256 -> 128 -> 32, 3 x 256.
    "tiger": dict(hidden=(512, 256, 128), code_dim=32, levels=3, codebook_size=256),
    # LETTER: its fixed deep MLP, 4 x 256, code dim 32 (sinkhorn on the last level).
    "letter": dict(hidden=LETTER_WIDTHS, code_dim=32, levels=4, codebook_size=256),
    # ETEGRec: in -> 512 -> 256 -> 128 (= code dim), 3 x 256.
    "etegrec": dict(hidden=(512, 256), code_dim=128, levels=3, codebook_size=256),
}


def rqvae_config(tok_cfg, in_dim: int) -> RQVAEConfig:
  """Frozen architecture from a `config.tokenizer` ConfigDict."""
  hidden = tok_cfg.hidden
  if hidden == "halving":
    hidden = halving_widths(in_dim, tok_cfg.code_dim)
  modes = tuple(tok_cfg.modes)
  if len(modes) != tok_cfg.levels:
    raise ValueError(f"tokenizer.modes has {len(modes)} entries for {tok_cfg.levels} levels")
  return RQVAEConfig(in_dim=in_dim, hidden=tuple(int(h) for h in hidden),
                     code_dim=tok_cfg.code_dim, levels=tok_cfg.levels,
                     codebook_size=tok_cfg.codebook_size, dropout=tok_cfg.dropout,
                     beta=tok_cfg.beta, modes=modes, level_reduce=tok_cfg.level_reduce,
                     residual_grad=tok_cfg.residual_grad, gumbel_tau=tok_cfg.gumbel_tau,
                     sinkhorn_eps=tok_cfg.sinkhorn_eps, sinkhorn_iters=tok_cfg.sinkhorn_iters,
                     init=tok_cfg.get("init", "flax"))


class MLP(nn.Module):
  widths: Sequence[int]
  dropout: float = 0.0
  init_scheme: str = "flax"  # xavier: the official LETTER / ETEGRec code's xavier_normal_, bias 0

  @nn.compact
  def __call__(self, x, train: bool):
    kernel = (nn.initializers.xavier_normal() if self.init_scheme == "xavier"
              else nn.linear.default_kernel_init)
    for i, w in enumerate(self.widths):
      x = nn.Dense(w, kernel_init=kernel, name=f"dense_{i}")(x)
      if i < len(self.widths) - 1:
        x = nn.relu(x)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x


class RQVAE(nn.Module):
  cfg: RQVAEConfig

  def setup(self):
    c = self.cfg
    self.encoder = MLP(tuple(c.hidden) + (c.code_dim,), c.dropout, c.init)
    self.decoder = MLP(tuple(reversed(c.hidden)) + (c.in_dim,), c.dropout, c.init)
    # Overwritten by k-means at the start of training; this init only matters without it.
    self.codebooks = self.param(
        "codebooks", nn.initializers.uniform(scale=2.0 / c.codebook_size),
        (c.levels, c.codebook_size, c.code_dim))

  def encode(self, x_BxF, train: bool = False):
    return self.encoder(x_BxF, train)

  def decode(self, q_BxD, train: bool = False):
    return self.decoder(q_BxD, train)

  def quantize(self, z_BxD, train: bool = False, key: Optional[jax.Array] = None,
               mask_B=None) -> RQOutput:
    c = self.cfg
    return residual_quantize(z_BxD, self.codebooks, modes=c.modes, train=train, beta=c.beta,
                             level_reduce=c.level_reduce, residual_grad=c.residual_grad,
                             gumbel_tau=c.gumbel_tau, sinkhorn_eps=c.sinkhorn_eps,
                             sinkhorn_iters=c.sinkhorn_iters, key=key, mask_B=mask_B)

  def __call__(self, x_BxF, train: bool = False, key: Optional[jax.Array] = None, mask_B=None):
    """Returns (reconstruction [B, F], RQOutput, latent z [B, D])."""
    z = self.encode(x_BxF, train)
    rq = self.quantize(z, train, key, mask_B)
    return self.decode(rq.quantized_BxD, train), rq, z


def reconstruction_loss(x_hat_BxF, x_BxF, mask_B=None):
  """Mean squared error (over the rows of `mask_B` when given)."""
  return masked_mean(jnp.square(x_hat_BxF - x_BxF), mask_B)
