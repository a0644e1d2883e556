"""TIGER (Rajput et al., NeurIPS 2023): RQ-VAE codes trained once and frozen, T5 over codes,
plain cross-entropy on each code level. Everything it needs is the shared core."""


def tokenizer_loss(cfg, dataset):
  """TIGER's tokenizer loss is the core's L_recon + L_rq: nothing to add."""
  del cfg, dataset
  return None
