"""TIGER (Rajput et al., NeurIPS 2023): RQ-VAE codes trained once and frozen, T5 over codes,
plain cross-entropy on each code level. Everything it needs is the shared core."""
from jaxrec.methods.base import Method, register


class Tiger(Method):
  name = "tiger"
  heads = ("level", "vocab", "items")


METHOD = register(Tiger())
