"""Data sets: readers for public formats, the synthetic default, splits and batching."""
from __future__ import annotations

import dataclasses
import os

from jaxrec.data.dataset import DataError, Dataset, drop_short_users, from_sequences
from jaxrec.data.pipeline import (BatchIterator, Split, bucket_lengths, eval_batches, eval_lengths,
                                  gather_batch, leave_one_out, plan_batches,
                                  sequence_windows, training_interactions)
from jaxrec.data import readers, synthetic

SOURCES = ("synthetic", "letter", "etegrec", "recbole")


def load_dataset(cfg) -> Dataset:
  """Loads the data set a `config.data` describes and drops (or rejects) short users."""
  source = cfg.source
  directory = os.path.expandvars(os.path.expanduser(cfg.dir)) if cfg.dir else ""
  features = tuple(cfg.features)
  if source == "synthetic":
    ds, _ = synthetic.generate(synthetic.SyntheticSpec(**cfg.synthetic.to_dict()))
    unknown = set(features) - set(ds.features)
    if unknown:
      raise ValueError(f"synthetic data has features {sorted(ds.features)}, not {sorted(unknown)}")
    # only the features asked for, as the readers load them: a `cf` left out is derived from
    # the interactions (jaxrec/pipeline.py) instead of taken from the generator
    ds = dataclasses.replace(ds, features={name: ds.features[name] for name in features})
    where = "synthetic"
  else:
    if not directory or not os.path.isdir(directory):
      raise DataError(directory or "data.dir", None, "data directory not found")
    if source == "letter":
      ds = readers.read_letter(directory, cfg.name, features, index=cfg.index)
      where = os.path.join(directory, f"{cfg.name}.inter.json")
    elif source == "etegrec":
      ds = readers.read_etegrec(directory, cfg.name, features)
      where = os.path.join(directory, f"{cfg.name}.train.jsonl")
    elif source == "recbole":
      ds = readers.read_recbole(directory, cfg.name, features)
      where = os.path.join(directory, f"{cfg.name}.inter")
    else:
      raise ValueError(f"data.source must be one of {SOURCES}, got {source!r}")
  if ds.n_users == 0:
    raise DataError(where, None, "has no users: the interactions file is empty")
  ds = drop_short_users(ds, cfg.min_len, cfg.short_users, where)
  if ds.n_users == 0:
    raise DataError(where, None, f"no user has the {cfg.min_len} interactions the leave-one-out "
                    "protocol needs (data.min_len): nothing to train or evaluate on")
  return ds
