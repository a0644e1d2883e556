"""Sequence models over semantic-ID codes."""
from jaxrec.recommender.t5 import T5
from jaxrec.recommender.t5_layers import T5Config, model_config

__all__ = ["T5", "T5Config", "model_config"]
