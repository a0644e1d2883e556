"""What SimCIT's fit optimises against what its IDs keep (the claims issue, SimCIT's leads):
a `simcit` config's tokenizer fitted as a run fits it (or reused from `--workdir`), then
its InfoNCE per view over the whole catalogue, in batches as in training (in-batch
negatives), with the anchor taken four ways:

  fused       the fused view encoding, not quantized (what the codes could keep at best)
  soft        the training objective: the soft codeword mixture, Gumbel noise at the fit's
              scale (`tokenizer.simcit.gumbel_scale`: 0 here by default, 1 as released)
  soft_noise  the same with unit Gumbel noise (the released setting), when the fit had none
  hard        the hard IDs' codewords (what the recommender's IDs carry)

hard - soft is the gap between the objective and the IDs: a fit can lower its loss through
mixtures of codewords no ID has. How soft the training assignment is, per level over the
catalogue (`sharpness`: the noise-free soft weights softmax(-distance / gumbel_tau) at the
training residuals): the mean weight on the nearest code (1: the hard ID; 1 / K: uniform)
and the effective number of codes exp(entropy). Each is given at `--batches` sizes (more in-batch negatives:
a larger loss, and on a small catalogue more negatives that share the anchor's topic), with
chance (log of the 2B - 1 candidates) beside it. Code-table health of the hard IDs too. With
the data set's own IDs loaded (`--set data.index=True`: Scientific's publisher IDs from Qwen
text), how many of an anchor's in-batch negatives share its first-level code (its topic),
on the same batches: the lead that small catalogues put many same-topic items in a batch.

  JAXREC_DATA_DIR=../shared/data python -m bench.experiments.simcit_gap \\
      --set tokenizer.simcit.gumbel_scale=1.0 --workdir /tmp/simcit-noise
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

if not __package__:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench import common  # noqa: E402
from jaxrec import pipeline  # noqa: E402
from bench.quality import apply_overrides, parse_override  # noqa: E402
from jaxrec.config import get_config  # noqa: E402
from jaxrec.data import load_dataset  # noqa: E402
from jaxrec.methods import get_method  # noqa: E402
from jaxrec.methods.base import code_table  # noqa: E402
from jaxrec.tokenizer import codes as codes_lib  # noqa: E402
from jaxrec.tokenizer import simcit  # noqa: E402
from jaxrec.tokenizer.train import epoch_batches  # noqa: E402


def anchors(params, views, key, model: simcit.SimCIT):
  """{mode: projected anchor [N, D]} and the projected view encodings [V, N, D]."""
  fused, _, _ = model.apply(params, views, method=simcit.SimCIT.encode)
  _, q_hard, p_VxNxD = model.apply(params, views, False)
  out = {"fused": model.apply(params, fused, method=simcit.SimCIT.project), "hard": q_hard}
  out["soft"] = model.apply(params, views, True, key)[1]
  if model.cfg.gumbel_scale != 1.0:
    noisy = simcit.SimCIT(dataclasses.replace(model.cfg, gumbel_scale=1.0))
    out["soft_noise"] = noisy.apply(params, views, True, key)[1]
  return out, p_VxNxD


def sharpness(params, views, key, model: simcit.SimCIT) -> dict:
  """Per level: the noise-free soft weights' mean weight on the nearest code and their
  effective number of codes, at the residuals training passes from level to level."""
  noise_free = simcit.SimCIT(dataclasses.replace(model.cfg, gumbel_scale=0.0))
  dist_NxCxK = noise_free.apply(params, views, True, key)[0].dist_BxCxK
  w = jax.nn.softmax(-dist_NxCxK / model.cfg.gumbel_tau, axis=-1)
  entropy = -jnp.sum(w * jnp.log(jnp.maximum(w, 1e-30)), axis=-1)
  return {"nearest_weight": [round(float(x), 4) for x in jnp.mean(jnp.max(w, -1), 0)],
          "effective_codes": [round(float(x), 1) for x in jnp.mean(jnp.exp(entropy), 0)]}


def batched_nce(q_NxD, p_NxD, idx_SxB, temperature: float) -> float:
  """The training loss's InfoNCE (GRACE denominator), mean over the [S, B] batches."""
  nce = jax.vmap(lambda i: simcit.grace_nce(q_NxD[i], p_NxD[i], temperature))
  return float(jnp.mean(nce(idx_SxB)))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="scientific", help="configs/simcit.py variant")
  p.add_argument("--set", action="append", default=[], help="KEY=VALUE config override")
  p.add_argument("--workdir", default=None, help="fit here, or reuse the fit found here")
  p.add_argument("--batches", default="256,1024")
  p.add_argument("--name", default=None, help="result file suffix")
  p.add_argument("--out", default=None)
  args = p.parse_args()
  cfg = get_config("simcit", args.config)
  apply_overrides(cfg, [parse_override(kv) for kv in args.set])
  method = get_method("simcit")
  ds = pipeline.ensure_features(cfg, load_dataset(cfg.data), method, print)
  workdir = args.workdir or os.path.join("/tmp", f"simcit-gap-{ds.name}")
  os.makedirs(workdir, exist_ok=True)
  t0 = time.time()
  table, (model, params) = code_table(cfg, ds, method, workdir, log=print)
  table.save(workdir)               # (as a run saves it) the next call reuses the fit
  fit_s = round(time.time() - t0, 1)
  views = [jnp.asarray(v) for v in simcit.load_views(cfg, ds)]
  s = cfg.tokenizer.simcit
  q, p_VxNxD = anchors(params, views, jax.random.key(cfg.seed + 7), model)
  n = ds.n_items
  rows = []
  for b in (int(x) for x in args.batches.split(",")):
    b = min(b, n)
    idx = epoch_batches(jax.random.key(cfg.seed), n, b)
    row = {"batch": b, "chance": round(math.log(2 * b - 1), 4)}
    for mode, q_NxD in q.items():
      per_view = [batched_nce(q_NxD, p_NxD, idx, float(s.temperature)) for p_NxD in p_VxNxD]
      row[mode] = [round(x, 4) for x in per_view]
    row["hard_minus_soft"] = [round(h - x, 4) for h, x in zip(row["hard"], row["soft"])]
    if ds.codes_NxC is not None:          # the data set's own IDs: level 1 as the topic
      topic = np.asarray(ds.codes_NxC)[:, 0][np.asarray(idx)]              # [S, B]
      same = (topic[:, :, None] == topic[:, None, :]).sum(-1) - 1
      row["same_topic_negatives"] = round(float(same.mean()), 2)
    rows.append(row)
    print(json.dumps(row), flush=True)
  sharp = sharpness(params, views, jax.random.key(cfg.seed + 7), model)
  print(json.dumps({"sharpness": sharp}), flush=True)
  codes = np.asarray(simcit.encode_catalogue(params, views, model=model)["codes_NxC"])
  health = codes_lib.health_dict(codes, (cfg.tokenizer.codebook_size,) * cfg.tokenizer.levels)
  result = {"config": f"simcit:{args.config}", "overrides": args.set, "data": ds.name,
            "items": n, "views": list(s.views), "temperature": s.temperature,
            "gumbel_scale": s.gumbel_scale, "epochs": cfg.tokenizer.epochs,
            "gumbel_tau": s.gumbel_tau, "fit_or_reuse_s": fit_s, "rows": rows,
            "sharpness": sharp,
            "health": {k: health[k] for k in ("used", "perplexity", "distinct_ids",
                                              "largest_group", "collision_rate")}}
  print(json.dumps(result["health"]))
  name = args.name or ("noise" if s.gumbel_scale else "default")
  common.write_json(common.result_path(f"simcit-gap-{name}-{ds.name}.json", args.out), result)


if __name__ == "__main__":
  main()
