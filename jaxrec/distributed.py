"""One process or many: JAX's multi-controller runtime for multi-host runs.

A run on a TPU slice or several GPU hosts is one process per host, all running the same
command. `initialize` starts `jax.distributed` when the run is multi-process: by the flags
`--coordinator HOST:PORT --num_processes N --process_id I` of `jaxrec.train` and
`jaxrec.evaluate`, or detected from the environment (TPU pods, SLURM, Open MPI: JAX's own
cluster detection); with neither it does nothing and the run is the single-process one.

What changes with several processes (`jaxrec/pipeline.py`, `jaxrec/training/`):
- one global 1-D data-parallel mesh over every process's devices, each process's devices
  contiguous in it;
- every process plans the same global batches (same order, same padding) and gathers only
  its rows of each (`process_rows`), made into one global array by
  `jax.make_array_from_process_local_data`: the samples and their order are those of the
  single-process run, whatever the number of processes;
- evaluation decodes each device's users locally (`per_device_eval`); the metric sums are
  reduced across devices and processes inside the jitted step, so every process holds the
  same totals;
- checkpoints: orbax writes from every process (each its own shards; the replicated state
  once); the tokenizer is fitted by process 0 alone (its checkpoints local to it) while the
  others wait, then read its code table; metrics.jsonl, results.json, report.png, the code
  table and logs come from process 0 only.
The filesystem of the workdir must be shared by the processes (as orbax requires).
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxrec.xla import Program, compiler_options


def _cluster_detected() -> bool:
  """A multi-process launch JAX can configure itself: a TPU pod slice, SLURM or Open MPI
  with more than one task."""
  env = os.environ
  return (len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
          or int(env.get("SLURM_NTASKS", "1") or 1) > 1
          or int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1)


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Starts the multi-controller runtime when the run is multi-process (flags given or a
  cluster detected); returns whether it did. Call before any other JAX call."""
  explicit = bool(coordinator) or (num_processes or 1) > 1
  if not (explicit or _cluster_detected()):
    return False
  if jax.distributed.is_initialized():
    return True
  # CPU processes need a collectives implementation for cross-process reductions (tests,
  # CPU clusters); accelerators use their own (NCCL, ICI) and ignore it.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator or None,
                             num_processes=num_processes or None,
                             process_id=process_id if process_id is not None and process_id >= 0
                             else None)
  return True


def is_primary() -> bool:
  """Process 0: the one that writes logs, metrics and results."""
  return jax.process_index() == 0


def multi_process() -> bool:
  return jax.process_count() > 1


_BARRIERS = {}
BARRIER_TIMEOUT_S = 24 * 3600   # the others may wait for a whole tokenizer fit on process 0


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (nothing with one process). A
  coordination-service barrier, not a device collective: it may wait for hours (gloo's
  device collectives give up after 30 s)."""
  if multi_process():
    from orbax.checkpoint import multihost
    n = _BARRIERS[name] = _BARRIERS.get(name, 0) + 1      # each use its own key
    multihost.get_barrier_sync_fn()(key=f"jaxrec-{name}-{n}", timeout_ms=BARRIER_TIMEOUT_S * 1000)


def mesh_devices() -> np.ndarray:
  """Every process's devices, each process's contiguous (its rows of a batch are one block)."""
  return np.array(sorted(jax.devices(), key=lambda d: (d.process_index, d.id)))


def process_rows(sharding, n: int) -> slice:
  """The rows of a global [n, ...] batch sharded as `sharding` that this process holds."""
  if not multi_process():
    return slice(0, n)
  spans = [idx[0] for idx in sharding.addressable_devices_indices_map((n,)).values()]
  start = min(s.start or 0 for s in spans)
  stop = max(n if s.stop is None else s.stop for s in spans)
  return slice(start, stop)


def global_batch(batch: dict, sharding) -> dict:
  """The global arrays of a batch from this process's rows of it (all of them with one
  process; every process holds as many rows of each field)."""
  if not multi_process():
    return jax.device_put(batch, sharding)
  n = jax.process_count()
  return {k: jax.make_array_from_process_local_data(sharding, v, (len(v) * n,) + v.shape[1:])
          for k, v in batch.items()}


def local_rows(x) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in order, on the host (every
  row with one process)."""
  if x.is_fully_addressable:
    return np.asarray(x)
  shards = {s.index[0].start or 0: s for s in x.addressable_shards}   # (replicas: once)
  return np.concatenate([np.asarray(shards[k].data) for k in sorted(shards)])


def replicate(tree, sharding):
  """`tree` placed on every device of `sharding` (replicated). With several processes the
  values go through the host: JAX builds a broken global array from one process's device
  arrays (jax 0.10), and every process holds the same values anyway."""
  if multi_process():
    tree = jax.device_get(tree)
  return jax.device_put(tree, sharding)


def place(tree, shardings):
  """`tree` placed leaf by leaf by `shardings` (a matching tree); through the host with
  several processes, as `replicate`."""
  if multi_process():
    tree = jax.device_get(tree)
  return jax.device_put(tree, shardings)


def per_device_eval(step, mesh):
  """`step(params, batch, *rest) -> (metric sums, per-row outputs)` compiled (`jax.jit`,
  decoding's compiler options) to run on every device over its own rows of the batch
  (`jax.shard_map`; params and `rest` replicated): the sums added across the mesh's "data"
  axis, the per-row outputs left split as the batch.

  Not left to XLA's sharding propagation: it does not split `lax.top_k` along the batch, so
  every beam-search level (and SASRec's full ranking) all-gathered the whole batch's scores
  to each device and ranked all of its users there (seen in the compiled HLO, jax 0.10)."""
  def local(params, batch, *rest):
    sums, rows = step(params, batch, *rest)
    return jax.lax.psum(sums, "data"), rows

  def per_device_step(params, batch, *rest):
    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data")) + (P(),) * len(rest),
                         out_specs=(P(), P("data")))(params, batch, *rest)
  return Program("eval", jax.jit(per_device_step, compiler_options=compiler_options("decode")))
