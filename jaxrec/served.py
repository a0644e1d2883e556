"""An exported recommender (`python -m jaxrec.export`) loaded without any training code: jax,
numpy and the safetensors reader, and `jaxrec.answer` for the requests in keys.

  from jaxrec import served
  rec = served.load("export/")             # an answer.Answerer
  rec.answer([{"user": "A1B2", "history": ["B00X", "B00Q"]}])

The folder (format FORMAT): manifest.json, recommend_L<length>.jaxexp (one serialised
`jax.export` program per history-length bucket, the batch dimension symbolic; inputs
(leaves, history [B, L] int32, mask [B, L] bool, user [B] int32), outputs (items [B, k_max],
scores [B, k_max])), weights.safetensors (the leaves in the manifest's order: the model's
parameters, then the code table and its prefix tables), items.json, users.json,
popular.json.
"""
from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from safetensors.numpy import load_file

from jaxrec.answer import Answerer, rank_histories
from jaxrec.errors import ConfigError, DataError

FORMAT = "jaxrec-export/1"
MANIFEST, WEIGHTS = "manifest.json", "weights.safetensors"


def program_file(length: int) -> str:
  return f"recommend_L{length}.jaxexp"


class ExportedModel:
  """The exported programs and their leaves on the default device; `rank` is an
  `answer.Ranker`. Batches are padded to a power of two, so a server batching requests
  compiles a handful of shapes."""

  def __init__(self, folder: str):
    self.folder = folder
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
      raise DataError(path, None, "not found: is this a folder written by jaxrec.export?")
    with open(path) as f:
      self.manifest = m = json.load(f)
    if m.get("format") != FORMAT:
      raise DataError(path, "format", f"{m.get('format')!r}: this jaxrec reads {FORMAT}")
    tensors = load_file(os.path.join(folder, WEIGHTS))
    self.leaves = [jax.device_put(tensors[name]) for name in m["leaves"]]
    self.codes = tensors[m["codes"]] if m["codes"] else None
    self.buckets = m["buckets"]
    self.programs = {}
    for length in self.buckets:
      with open(os.path.join(folder, program_file(length)), "rb") as f:
        self.programs[length] = jax.jit(jax.export.deserialize(bytearray(f.read())).call)

  def warmup(self, max_batch: int, log=print) -> float:
    """Compiles every shape a batch of up to `max_batch` requests takes (each history-length
    bucket at each power of two); returns the seconds."""
    t0 = time.time()
    for length in self.buckets:
      for rows in (1 << i for i in range((max_batch - 1).bit_length() + 1)):
        t = time.time()
        zeros = np.zeros((rows, length), np.int32)
        jax.block_until_ready(self.programs[length](self.leaves, zeros, zeros > 0, zeros[:, 0]))
        log(f"compiled history length {length}, batch {rows}: {time.time() - t:.1f}s")
    return time.time() - t0

  def rank(self, histories: list, users: list, n: int, batch_size: int = 256):
    """(items [U, n], scores [U, n], IDs [U, n, C] or None) after each history (item ids,
    oldest first; the last `max_len` count); -1 where fewer than n were found."""
    if n > self.manifest["k_max"]:
      raise ConfigError(f"{n} items asked of an export of at most {self.manifest['k_max']}")
    return rank_histories(
        lambda hist, mask, user: self.programs[hist.shape[1]](self.leaves, hist, mask, user),
        histories, users, n, self.manifest["max_len"], self.buckets, batch_size,
        lambda real: 1 << (real - 1).bit_length(), self.codes)     # rows: a power of two


def answerer(model: ExportedModel, k: int = 10, exclude_history: bool = False) -> Answerer:
  """The exported model answering requests in the data set's keys, `k` items each."""
  folder, k_max = model.folder, model.manifest["k_max"]
  if k > k_max:
    raise ConfigError(f"k={k}: the export returns at most {k_max} items")

  def read(name):
    with open(os.path.join(folder, name)) as f:
      return json.load(f)

  popular = read("popular.json")
  return Answerer(model.rank, read("items.json"), read("users.json"), popular["items"],
                  popular["counts"], k, k_max, exclude_history)


def load(folder: str, k: int = 10, exclude_history: bool = False) -> Answerer:
  return answerer(ExportedModel(folder), k, exclude_history)
