"""`python -m jaxrec.export --workdir W --out DIR`: a run's best checkpoint as a folder that
`jaxrec.served` (jax, numpy and safetensors; no training code) or `jaxrec.serve` (HTTP)
answers requests from.

The recommend function (history encoding, beam search constrained to the catalogue or
SASRec's full ranking) is serialised with `jax.export` (StableHLO) once per history-length
bucket of the run, the batch dimension symbolic; its parameters, code table and prefix
tables go to one safetensors file as the programs' leading arguments, so a new catalogue
export does not grow the programs. `--platforms cpu,cuda,tpu` lowers for several backends
at once (default: this machine's). The folder is written beside its final name and renamed
into place; an existing folder is never overwritten. See `jaxrec.served` for the layout.
"""
from __future__ import annotations

import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from safetensors.numpy import save_file

from jaxrec import cli, served
from jaxrec.errors import ConfigError
from jaxrec.pipeline import item_keys, load_run, user_keys
from jaxrec.training.evaluation import most_popular

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by jaxrec.train.", required=True)
_OUT = flags.DEFINE_string("out", None, "The export folder to write (must not exist).", required=True)
_K_MAX = flags.DEFINE_integer("k_max", 0, "Most items a request may ask for (default: the beam "
                              "for semantic IDs, min(catalogue, 100) for SASRec).", lower_bound=0)
_PLATFORMS = flags.DEFINE_list("platforms", [], "Backends to lower for (cpu, cuda, rocm, tpu); "
                               "default this machine's.")


def export_run(workdir: str, out: str, k_max: int = 0, platforms=None) -> dict:
  """Writes the export folder `out` of the run in `workdir`; returns its manifest."""
  if os.path.exists(out):
    raise ConfigError(f"--out={out} exists: choose a new folder (an export is never overwritten)")
  run, params, _ = load_run(workdir)
  ds, cfg = run.dataset, run.cfg
  limit = min(cfg.train.beam if run.codes is not None else ds.n_items, ds.n_items)
  if k_max > limit:
    raise ConfigError(f"--k_max={k_max}: this run returns at most {limit} items per user "
                      "(train.beam for semantic IDs, the catalogue for SASRec)")
  k_max = k_max or min(limit, 100)
  named, treedef = jax.tree_util.tree_flatten_with_path((params, run.code_args))
  names = [jax.tree_util.keystr(path) for path, _ in named]
  leaves = [np.asarray(jax.device_get(x)) for _, x in named]

  def recommend(leaves, history_BxL, mask_BxL, user_B):
    p, code_args = jax.tree_util.tree_unflatten(treedef, leaves)
    return run.recommend_fn(p, history_BxL, mask_BxL, user_B, *code_args, k=k_max)

  (b,) = jax.export.symbolic_shape("b")
  specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
  tmp = out.rstrip("/") + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)    # a killed export's remains
  os.makedirs(tmp)
  for length in run.buckets:
    exp = jax.export.export(jax.jit(recommend), platforms=platforms or None)(
        specs, jax.ShapeDtypeStruct((b, length), jnp.int32),
        jax.ShapeDtypeStruct((b, length), jnp.bool_), jax.ShapeDtypeStruct((b,), jnp.int32))
    with open(os.path.join(tmp, served.program_file(length)), "wb") as f:
      f.write(exp.serialize())
  save_file(dict(zip(names, leaves)), os.path.join(tmp, served.WEIGHTS))
  popular, counts = most_popular(run)
  manifest = {
      "format": served.FORMAT, "method": cfg.method, "variant": cfg.variant,
      "dataset": ds.name, "n_items": ds.n_items, "k_max": int(k_max),
      "buckets": [int(x) for x in run.buckets], "max_len": int(cfg.data.max_len),
      "leaves": names, "codes": names[len(jax.tree_util.tree_leaves(params))]
      if run.codes is not None else None,
      "platforms": list(platforms or [jax.default_backend()]), "jax": jax.__version__,
      "workdir": os.path.abspath(workdir)}
  for name, obj in (("items.json", item_keys(ds)), ("users.json", user_keys(ds)),
                    ("popular.json", {"items": [int(i) for i in popular],
                                      "counts": [int(c) for c in counts]}),
                    (served.MANIFEST, manifest)):
    with open(os.path.join(tmp, name), "w") as f:
      json.dump(obj, f)
  os.replace(tmp, out)
  return manifest


def main(argv):
  del argv
  m = export_run(_WORKDIR.value, _OUT.value, _K_MAX.value, _PLATFORMS.value)
  size = sum(os.path.getsize(os.path.join(_OUT.value, f)) for f in os.listdir(_OUT.value))
  print(f"exported {m['method']} on {m['dataset']} ({m['n_items']} items, k <= {m['k_max']}, "
        f"{len(m['buckets'])} programs for {', '.join(m['platforms'])}, {size / 2**20:.1f} MiB): "
        f"{_OUT.value}", file=sys.stderr)


if __name__ == "__main__":
  cli.run(main)
