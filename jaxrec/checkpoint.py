"""Orbax checkpoint manager wrapper: save, restore, resume, with corruption fallback.

A checkpoint holds a pytree `state` (train state(s), code table, ...) and a JSON `meta`
(data iterator state, best validation score, ...). `meta["checksum"]` is a digest of the
state's bytes, so a damaged checkpoint is detected even where the storage layer would
return garbage instead of failing; a checkpoint that fails to restore or to verify is
reported and the previous one is used, never silently trained over.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath


def write_atomic(path: str, data) -> None:
  """Writes `path` whole or not at all (str or bytes): a kill mid-write leaves the previous
  file, or none, never a torn one that a resumed run would fail to read."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
    f.write(data)
  os.replace(tmp, path)


def read_jsonl(path: str) -> list:
  """The records of a JSON-lines log, without a line torn by a kill mid-write."""
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records


def tree_checksum(tree) -> str:
  """sha256 over every leaf's dtype, shape and bytes, in tree order."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(tree):
    a = np.asarray(jax.device_get(jax.random.key_data(leaf) if _is_key(leaf) else leaf))
    h.update(str((a.dtype.str, a.shape)).encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def _is_key(x):
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


class Checkpoints:
  """One directory of numbered checkpoints (`max_to_keep` newest kept). `partial` lists the
  saves an interruption left unfinished (orbax's `*tmp*` folders), removed on opening."""

  def __init__(self, directory: str, max_to_keep: int = 2, local: bool = False):
    """`local`: only this process saves and restores (arrays on its own devices: the
    tokenizer fit, which process 0 runs alone in a multi-process run)."""
    self.directory = os.path.abspath(directory)
    self.partial = sorted(n for n in (os.listdir(self.directory) if os.path.isdir(self.directory)
                                      else []) if "tmp" in n)
    # alone in a multi-process run: saved as host arrays (orbax refuses one process's device
    # arrays there) and the folder made here (orbax creates it only for all processes)
    self._host = local and jax.process_count() > 1
    me = jax.process_index()
    multiprocessing = (ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"local-{me}")
                       if self._host else ocp.options.MultiprocessingOptions())
    if self._host:
      os.makedirs(self.directory, exist_ok=True)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not self._host,
                                           enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True,
                                           multiprocessing_options=multiprocessing)
    self._mgr = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

  def steps(self):
    return sorted(self._mgr.all_steps())

  def save(self, step: int, state, meta: dict) -> None:
    """Saves synchronously. Saving a step again (e.g. a periodic save that fell on the
    last step of an epoch, then the epoch-end save with evaluation results) replaces it."""
    if step in self._mgr.all_steps():
      self._mgr.delete(step)
    meta = dict(meta, checksum=tree_checksum(state))
    if self._host:
      state = jax.device_get(state)
    self._mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 meta=ocp.args.JsonSave(meta)))
    self._mgr.wait_until_finished()

  def _saved_as(self, step: int, sharding):
    """The saved state's tree as abstract arrays placed by `sharding` (so a checkpoint saved
    on another device count restores here: orbax refuses the saved topology otherwise)."""
    saved = ocp.PyTreeCheckpointHandler().metadata(
        epath.Path(self.directory) / str(step) / "state")
    saved = getattr(saved, "tree", saved)
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), saved)

  def restore(self, abstract_state, step: Optional[int] = None,
              sharding=None) -> Optional[tuple[int, Any, dict]]:
    """Restores `step` (default: the newest that is intact). Returns (step, state, meta) or
    None when there is no usable checkpoint. Damaged checkpoints are logged loudly. With no
    `abstract_state`, the saved tree is restored as saved, placed by `sharding` when given."""
    candidates = [step] if step is not None else list(reversed(self.steps()))
    for s in candidates:
      try:
        target = (self._saved_as(s, sharding) if abstract_state is None and sharding is not None
                  else abstract_state)
        out = self._mgr.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(jax.device_get(target) if self._host else target),
            meta=ocp.args.JsonRestore()))
        state, meta = out["state"], dict(out["meta"])
        if self._host:
          state = jax.tree.map(jax.numpy.asarray, state)
        expected = meta.pop("checksum", None)
        if expected is not None and expected != tree_checksum(state):
          raise ValueError("checksum mismatch: the saved arrays were altered")
        return s, state, meta
      except Exception as e:  # orbax/tensorstore raise many types for a damaged file
        logging.error("checkpoint %s/%s is damaged or partial (%s: %s); %s", self.directory, s,
                      type(e).__name__, str(e).splitlines()[0] if str(e) else "",
                      "trying the previous one" if s != candidates[-1] else "no older one left")
        print(f"WARNING: checkpoint {self.directory}/{s} could not be restored "
              f"({type(e).__name__}); " + ("falling back to an older one" if s != candidates[-1]
                                           else "no older one is left"), flush=True)
    return None

  def close(self):
    self._mgr.close()
