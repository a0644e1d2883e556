"""jaxrec: generative recommendation with learnable item tokenization, in JAX."""

__version__ = "0.1.0"
