"""Sequence models over semantic-ID codes."""
from jaxrec.recommender.t5 import T5, T5Config, model_config
