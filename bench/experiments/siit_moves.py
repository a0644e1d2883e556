"""Where SIIT's moving items land: a refinement round run on a SIIT run's best checkpoint
(its recommender, its task-A soft tokens, the code table it was trained with), assigned by
both rules of `siit.movers`, each table evaluated on the validation split as a round does.

  'better'  a moving item (its best task-A candidate beats its current ID by more than
            `keep_margin`) takes only a candidate that beats its ID by the margin, else
            keeps its ID
  'any'     it takes any free candidate, however low (the rule before 2026-12-06)

Per rule: the share of items that change ID, the share moved to an ID that does not beat
theirs by the margin (`moved_not_better`), and valid R@10 / N@10 after the swap beside the
checkpoint's own.

  JAXREC_DATA_DIR=../shared/data python -m bench.experiments.siit_moves \\
      /work/runs/quality/siit-scientific-paper-seed1 \\
      --out bench/results/siit-moves-scientific-seed1.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys

if not __package__:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench import common  # noqa: E402
from jaxrec import distributed, pipeline  # noqa: E402
from jaxrec.config import config_from_json  # noqa: E402
from jaxrec.methods import siit  # noqa: E402
from jaxrec.training.evaluation import evaluate_split  # noqa: E402
from jaxrec.training.run import set_codes  # noqa: E402

KEYS = ("recall@10", "ndcg@10")


def round_stats(cands, scores, own, current, new, margin: float) -> dict:
  """What an assignment does: items changed (per level), moved to an ID no better than theirs
  by the margin, movers that kept their ID."""
  moved = np.any(new != current, axis=1)
  wants = scores[:, 0] - own > margin              # best candidate beats the ID by the margin
  down = siit.moved_not_better(cands, scores, own, current, new, margin)
  return {"ids_changed": round(float(moved.mean()), 5),
          "changed_per_level": [round(float(x), 5) for x in np.mean(new != current, axis=0)],
          "wants_to_move": round(float(wants.mean()), 5),
          "moved_not_better": round(float(down.mean()), 5),
          "movers_kept": round(float(np.mean(wants & ~moved)), 5)}


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("workdir", help="a finished SIIT run's workdir")
  p.add_argument("--out", default=None, help="output .json (default: printed only)")
  args = p.parse_args()
  with open(os.path.join(args.workdir, "config.json")) as f:
    cfg = config_from_json(f.read())
  if cfg.method != "siit":
    raise SystemExit(f"{args.workdir}: a {cfg.method} run, not SIIT's")
  run = pipeline.setup(cfg, args.workdir, log=lambda m: None)
  step, tree, meta = pipeline.restore_best(run)
  set_codes(run, tree["codes"])
  sc = cfg.siit
  margin = float(sc.keep_margin)
  soft = siit.SoftTokens(int(sc.soft_tokens), run.model.cfg.d_model)
  params = {"t5": tree["params"], "soft": tree["extra"]["soft"]}
  feats = distributed.replicate(jnp.asarray(run.dataset.features[sc.feature], jnp.float32),
                                run.replicated)
  current = np.asarray(run.codes)
  cands, scores, own = siit.candidates(params, feats, run.codes, run.steps, run.model, soft,
                                       int(sc.beam), cfg.train.eval_batch_size, True)
  before = evaluate_split(run, params["t5"], "valid")
  out = {"workdir": args.workdir, "step": int(step), "epoch": meta.get("epoch"),
         "keep_margin": margin, "beam": int(sc.beam),
         "align_top1": round(float(np.mean(np.all(cands[:, 0] == current, axis=1))), 5),
         "valid": {k: round(before[k], 5) for k in KEYS}, "rules": {}}
  for movers in ("better", "any"):
    new, collisions = siit.greedy_assign(cands, scores, current, run.table.sizes,
                                         int(sc.capacity), float(sc.usage_penalty), own, margin,
                                         movers)
    set_codes(run, jnp.asarray(new))
    after = evaluate_split(run, params["t5"], "valid")
    out["best_candidate_collisions"] = collisions
    out["rules"][movers] = {**round_stats(cands, scores, own, current, new, margin),
                            "valid_after": {k: round(after[k], 5) for k in KEYS}}
  set_codes(run, jnp.asarray(current))
  print(json.dumps(out, indent=1))
  if args.out:
    common.write_json(args.out, out)


if __name__ == "__main__":
  main()
