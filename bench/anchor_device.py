"""The PyTorch + HuggingFace anchor (../shared/anchors) on an accelerator.

The anchor scripts time the HF T5 on the CPU. On a GPU host a user of that stack moves the
same model and batches to the GPU; this script does that with the anchors' own functions
(data, model, trie, collation), so the model, data and batch are theirs, and times with
`torch.cuda.synchronize()` around each step (a GPU step is asynchronous). It is run next to
`bench/speed.py` on the same machine (`bench/device_check.sh`); torch and transformers are
not project dependencies. The JSON names the device, the host CPU and the versions.

  python -m bench.anchor_device --anchors ../shared/anchors --batch 256 1024 --amp
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import statistics
import sys
import time

if not __package__:   # run as `python bench/anchor_device.py`: the repository root, as `-m` from it
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import cpu_model  # noqa: E402  (the standard library only: no JAX here)


def _load(anchors, name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(anchors, name + ".py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _sync(torch, dev):
  if dev.type == "cuda":
    torch.cuda.synchronize()


def bench_train(bt, torch, dev, samples, batch, warmup, steps, amp):
  """Forward + backward + AdamW step of the anchor's T5 on `dev`; bf16 autocast if `amp`."""
  rng = random.Random(0)
  order = list(range(len(samples)))
  rng.shuffle(order)
  batches = [[t.to(dev) for t in bt.collate([samples[j] for j in order[b * batch:(b + 1) * batch]])]
             for b in range(warmup + steps)]
  torch.manual_seed(0)
  model = bt.build_model().to(dev).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
  times, losses = [], []
  for i, (ids, mask, labels) in enumerate(batches):
    _sync(torch, dev)
    t = time.perf_counter()
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
      loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    _sync(torch, dev)
    if i >= warmup:
      times.append(time.perf_counter() - t)
    losses.append(float(loss.detach()))
  med = statistics.median(times)
  return {"batch": batch, "amp_bf16": amp, "timed_steps": len(times),
          "ms_per_step_median": round(med * 1e3, 2), "samples_per_s_median": round(batch / med, 1),
          "n_train_samples": len(samples), "loss_first_last": [round(losses[0], 3), round(losses[-1], 3)]}


def bench_decode(bd, torch, dev, samples, trie, batch, warmup, n_batches, amp):
  """HF `generate`, beam 20, constrained by the anchor's prefix trie, on `dev`."""
  fn = bd.make_prefix_fn(trie, [0])
  torch.manual_seed(0)
  model = bd.build_model().to(dev).eval()
  times = []
  for b in range(warmup + n_batches):
    ids, mask = (t.to(dev) for t in bd.collate(samples[b * batch:(b + 1) * batch]))
    _sync(torch, dev)
    t = time.perf_counter()
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
      out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=20,
                           num_return_sequences=20, max_new_tokens=bd.N_LEVELS + 1,
                           prefix_allowed_tokens_fn=fn, early_stopping=True)
    _sync(torch, dev)
    if b >= warmup:
      times.append(time.perf_counter() - t)
  med = statistics.median(times)
  return {"batch": batch, "amp_bf16": amp, "timed_batches": len(times),
          "s_per_batch_median": round(med, 3), "users_per_s_median": round(batch / med, 1),
          "sequences_shape": list(out.shape)}


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--anchors", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "..", "..", "shared", "anchors"))
  p.add_argument("--batch", type=int, nargs="+", default=[256, 1024])
  p.add_argument("--decode_batch", type=int, default=256)
  p.add_argument("--decode_batches", type=int, default=8)
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--amp", action="store_true", help="also time bf16 autocast")
  p.add_argument("--device", default="cuda", help="torch device (cpu only to check the script)")
  p.add_argument("--out", default=None)
  args = p.parse_args()
  import torch
  import transformers
  dev = torch.device(args.device)
  bt, bd = _load(args.anchors, "bench_train"), _load(args.anchors, "bench_decode")
  with open(f"{bt.DATA}/Instruments.inter.json") as f:
    inter = json.load(f)
  codes = bt.load_codes(f"{bt.DATA}/Instruments.index.json")   # the anchors' one ID format
  train, test = bt.train_samples(inter, codes), bd.test_samples(inter, codes)
  trie = bd.Trie(sorted(set(tuple(c) for c in codes.values())))
  res = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
         "cpu": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(),
         "torch": torch.__version__, "transformers": transformers.__version__,
         "train": [], "decode": []}
  for amp in ([False, True] if args.amp else [False]):
    for b in args.batch:
      r = bench_train(bt, torch, dev, train, b, 5, args.steps, amp)
      res["train"].append(r)
      print("anchor train", json.dumps(r), flush=True)
    r = bench_decode(bd, torch, dev, test, trie, args.decode_batch, 1, args.decode_batches, amp)
    res["decode"].append(r)
    print("anchor decode", json.dumps(r), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(res, f, indent=2)


if __name__ == "__main__":
  main()
