"""The PyTorch + peft anchor of `bench/llm.py`: the same Qwen2-shaped model (random weights,
built and saved here with transformers so that bench.llm loads the very same folder), the
same sequence layout and batch, LoRA r 8 / alpha 32 / dropout 0.05 on the seven projections
with the embedding trained (LC-Rec's lora_finetune.py settings), AdamW; HF's causal-LM loss on
the target's 4 code positions. torch, transformers and peft are not project dependencies:
run it in a scratch venv (../shared/anchors/README.md), with the anchors' malloc settings.

  <venv>/bin/python -m bench.anchor_lora --folder /tmp/llm-tiny
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

if not __package__:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import cpu_model  # noqa: E402  (the standard library only)

# bench/llm.py's layout (kept equal by hand: this file imports no JAX)
LEVELS, CODES, HISTORY = 4, 256, 20
HEAD, SEP, TAIL = list(range(10, 30)), [5], list(range(40, 55))
TINY = dict(vocab_size=8192, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True, torch_dtype="float32")


def main():
  import numpy as np
  import peft
  import torch
  import transformers
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--folder", required=True, help="where the model is saved (for bench.llm)")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--out", default=None)
  args = p.parse_args()
  torch.manual_seed(0)
  torch.set_num_threads(args.threads)
  model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**TINY))
  model.save_pretrained(args.folder, safe_serialization=True)
  model.resize_token_embeddings(TINY["vocab_size"] + LEVELS * CODES)     # the ID tokens
  model = peft.get_peft_model(model, peft.LoraConfig(
      r=8, lora_alpha=32, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
      modules_to_save=["embed_tokens"]))
  opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4,
                          weight_decay=0.0)
  rng = np.random.default_rng(0)
  offsets = TINY["vocab_size"] + CODES * np.arange(LEVELS)

  def batch():
    codes = rng.integers(0, CODES, (args.batch, HISTORY + 1, LEVELS)) + offsets
    rows = []
    for b in range(args.batch):
      items = [list(codes[b, i]) for i in range(HISTORY)]
      hist = sum(([*SEP, *it] if i else it for i, it in enumerate(items)), [])
      rows.append(HEAD + hist + TAIL + list(codes[b, HISTORY]))
    ids = torch.tensor(rows)
    labels = torch.full_like(ids, -100)
    labels[:, -LEVELS:] = ids[:, -LEVELS:]
    return ids, labels

  data = [batch() for _ in range(args.warmup + args.steps)]
  times = []
  model.train()
  for i, (ids, labels) in enumerate(data):
    t = time.perf_counter()
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if i >= args.warmup:
      times.append(time.perf_counter() - t)
  ms = 1000 * statistics.median(times)
  seq = data[0][0].shape[1]
  trained = sum(q.numel() for q in model.parameters() if q.requires_grad)
  result = {"framework": "pytorch+peft", "batch": args.batch, "sequence": seq,
            "parameters_trained": trained, "step_ms": round(ms, 1),
            "step_ms_min_max": [round(1000 * min(times), 1), round(1000 * max(times), 1)],
            "tokens_per_s": round(args.batch * seq / ms * 1000, 1), "threads": args.threads,
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                        "torch": torch.__version__, "transformers": transformers.__version__,
                        "peft": peft.__version__}}
  print(json.dumps(result), flush=True)
  if args.out:
    json.dump(result, open(args.out, "w"), indent=2)


if __name__ == "__main__":
  main()
