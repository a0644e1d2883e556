"""The names scripts and notebooks used before the run was split into `jaxrec.pipeline`
(setup, train_and_evaluate) and `jaxrec.training` (loop, checkpoints, evaluation); kept so
that they still work. Nothing in jaxrec imports this module."""
from jaxrec.pipeline import make_mesh, recommend, restore_best, setup, train_and_evaluate

__all__ = ["make_mesh", "recommend", "restore_best", "setup", "train_and_evaluate"]
