"""What a run has set up (`Run`), shared by training, evaluation and `jaxrec.evaluate`, and
its item code table, which methods that re-tokenize (ETEGRec, SIIT) swap during training.

Shape letters: N items, C code levels.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxrec import decode, distributed
from jaxrec.data import Dataset
from jaxrec.tokenizer.codes import CodeTable, health_dict


@dataclasses.dataclass
class Run:
  """Everything set up for a run. Methods over semantic IDs hold a code table, their model
  and its prefix tables; a model over item ids (SASRec) holds neither (table, codes and
  tables are None)."""
  cfg: Any
  workdir: str
  dataset: Dataset
  splits: dict
  buckets: tuple
  mesh: Mesh
  model: Any = None
  steps: Any = None         # the model's module of pure steps (`recommender.family`)
  eval_fn: Any = None       # jitted: (params, batch, *code_args) -> (metric sums, items)
  loss_fn: Any = None       # jitted: (params, batch, *code_args) -> (loss sum, samples); for
                            # train.select='loss' (None: the model has no such loss)
  recommend_fn: Any = None  # jitted: (params, history_BxL, mask_BxL, user_B, *code_args, k=)
                            # -> (items [B, k], scores [B, k]); -1 / -inf where none
  table: Optional[CodeTable] = None
  codes: Optional[jax.Array] = None         # [N, C] on device, replicated
  tables: Optional[decode.PrefixTables] = None
  tokenizer: Any = None     # (model, params) of a trained tokenizer, None for given codes
  step_args: dict = dataclasses.field(default_factory=dict)  # constants a model over item
                            # ids binds into its steps (SASRec's item code table)

  @property
  def batch_sharding(self):
    return NamedSharding(self.mesh, P("data"))

  @property
  def replicated(self):
    return NamedSharding(self.mesh, P())

  def state_sharding(self, tree):
    """Where each leaf of a training state lives: replicated, or with train.shard_params
    (FSDP-style) split over the mesh's "data" axis along its largest axis that the device
    count divides (parameters and their optimizer moments alike; a leaf with no such axis,
    a scalar or a bias of odd width, stays replicated). XLA's sharding propagation then
    gathers each parameter where a step uses it and reduce-scatters its gradient."""
    n = self.mesh.devices.size
    if n == 1 or not self.cfg.train.get("shard_params", False):
      return jax.tree.map(lambda _: self.replicated, tree)

    def place(x):
      shape = getattr(x, "shape", ())
      axes = [a for a in range(len(shape)) if shape[a] % n == 0 and shape[a] >= n]
      if not axes:
        return self.replicated
      a = max(axes, key=lambda i: shape[i])
      return NamedSharding(self.mesh, P(*([None] * a + ["data"])))
    return jax.tree.map(place, tree)

  def place_state(self, tree):
    """`tree` (a training state) placed by `state_sharding`."""
    return distributed.place(tree, self.state_sharding(tree))

  @property
  def code_args(self) -> tuple:
    """What the steps read besides params and batch: the current code table and its prefix
    tables (generative methods), nothing for models over item ids."""
    return () if self.codes is None else (self.codes, self.tables)

  def rows(self, batch_size: int) -> slice:
    """This process's rows of every batch of `batch_size` (all of them with one process)."""
    return distributed.process_rows(self.batch_sharding, batch_size)

  def shard(self, batch):
    """A batch (this process's rows of it) as global arrays sharded over the mesh."""
    return distributed.global_batch(batch, self.batch_sharding)


def make_mesh() -> Mesh:
  """A 1-D data-parallel mesh over every device of every process (CPU, GPUs or TPU cores)."""
  return Mesh(distributed.mesh_devices(), ("data",))


def install_codes(run: Run, table: CodeTable) -> None:
  """Makes a host code table the run's, with its prefix tables, replicated on the mesh."""
  run.table = table
  run.codes = distributed.replicate(jnp.asarray(table.codes_NxC), run.replicated)
  run.tables = distributed.replicate(
      decode.prefix_tables(table.codes_NxC, run.cfg.tokenizer.shared_ids), run.replicated)


def set_codes(run: Run, codes_NxC) -> None:
  """Makes `codes_NxC` (device, [N, C]) the run's code table: decoding tables rebuilt on device."""
  run.codes = distributed.replicate(codes_NxC.astype(jnp.int32), run.replicated)
  run.tables = distributed.replicate(decode.build_prefix_tables(run.codes), run.replicated)


def save_final_codes(run: Run, best) -> dict:
  """For plans whose code table changes (ETEGRec, SIIT): the best checkpoint's IDs become
  the run's, saved as codes_final.npz with their health; `Plan.finish` of those plans."""
  set_codes(run, best["codes"])
  codes = np.asarray(best["codes"])
  stats = {"final": health_dict(codes, run.table.sizes)}
  run.table = CodeTable(codes, run.table.sizes, stats, run.table.fingerprint + "-trained")
  if distributed.is_primary():
    run.table.save(run.workdir, "codes_final")
  return {"final_codes": stats["final"]}
