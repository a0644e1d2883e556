"""SimCIT (Li et al., arXiv 2506.16683, "A Simple Contrastive Framework of Item Tokenization
for Generative Recommendation"): a residual quantizer trained only contrastively over
several item views (`jaxrec/tokenizer/simcit.py`, which follows the official tokenizer code
and says where), then TIGER's T5 over its IDs. The authors released the tokenizer only; the
recommender here is the shared plan, trained and decoded exactly as TIGER's.
"""
from __future__ import annotations

from jaxrec.methods.base import Method, register
from jaxrec.tokenizer import simcit as simcit_tokenizer


class SimCIT(Method):
  """SimCIT's tokenizer, then TIGER's recommender (and its heads) over its IDs."""
  name = "simcit"
  heads = ("level", "vocab")

  def required_features(self, cfg):
    """SimCIT reads its views (derived when 'cf' or 'text' is missing)."""
    return tuple(cfg.tokenizer.simcit.views)

  def build_code_table(self, cfg, dataset, key, workdir=None, log=print, n_devices: int = 1):
    return simcit_tokenizer.build_code_table(cfg, dataset, key, workdir=workdir, log=log,
                                             n_devices=n_devices)


METHOD = register(SimCIT())
