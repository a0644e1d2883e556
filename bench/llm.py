"""An LLM recommender's train step (LoRA) in jaxrec, next to PyTorch + peft on the same model.

  <torch venv>/bin/python -m bench.anchor_lora --folder /tmp/llm-tiny      # writes the model
  python -m bench.llm --folder /tmp/llm-tiny                               # the same model here
  python -m bench.llm --shape qwen2.5-0.5b --dtype bfloat16                # on an accelerator

A Qwen2-shaped model with random weights (the anchor builds it with transformers and saves
it; `--shape` builds a named shape's random weights here without a folder): the sequence
is LC-Rec's layout, prompt tokens around 20 history items of 4 codes (1,024 ID tokens,
4 x 256) and the target's codes; LoRA r 8, alpha 32, dropout 0.05 on the seven projections,
the embedding trained too (LC-Rec's modules_to_save); AdamW. The loss: a softmax per code
level over the target's 4 positions (the anchor: HF's causal-LM loss on those 4 positions,
over the whole vocabulary); the backbone's forward and backward dominate both. Prints and
writes one JSON: ms per step (median), tokens/s, XLA's FLOP count of the step and the
achieved FLOP/s.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time

if not __package__:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench import common  # noqa: E402

LEVELS, CODES, HISTORY = 4, 256, 20
HEAD, SEP, TAIL = tuple(range(10, 30)), (5,), tuple(range(40, 55))   # the anchor's too
SHAPES = {   # Qwen2.5-0.5B's config.json (hidden 896, 24 layers, 14 heads, 2 KV heads)
    "qwen2.5-0.5b": dict(d_model=896, d_ff=4864, heads=14, kv_heads=2, head_dim=64, layers=24,
                         vocab_rows=151936, qkv_bias=True, tie_embeddings=True,
                         rope_theta=1e6, norm_eps=1e-6),
}


def model_and_params(args):
  from jaxrec.recommender import decoder_steps, hf
  from jaxrec.recommender.decoder import Decoder, DecoderConfig
  lora = dict(lora_rank=8, lora_alpha=32.0, lora_dropout=0.05, train_rows="all", dtype=args.dtype)
  prompt = dict(prompt_head=HEAD, prompt_sep=SEP, prompt_tail=TAIL)
  sizes = (CODES,) * LEVELS
  if args.folder:
    cfg = dataclasses.replace(hf.decoder_config(args.folder, sizes, **lora), **prompt)
  else:
    cfg = DecoderConfig(level_sizes=sizes, dropout=0.0, logit_scale=False, **SHAPES[args.shape],
                        **lora, **prompt)
  model = Decoder(cfg)
  batch = batch_of(args.batch, 0)
  params = decoder_steps.init_params(model, codes_table(), batch, jax.random.key(0))
  return model, params


def codes_table(n=4096, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, CODES, (n, LEVELS)), jnp.int32)


def batch_of(b, seed):
  rng = np.random.default_rng(seed)
  return {"history_BxL": jnp.asarray(rng.integers(0, 4096, (b, HISTORY)), jnp.int32),
          "mask_BxL": jnp.ones((b, HISTORY), bool), "user_B": jnp.zeros(b, jnp.int32),
          "target_B": jnp.asarray(rng.integers(0, 4096, b), jnp.int32),
          "weight_B": jnp.ones(b)}


def sequence_length() -> int:
  return len(HEAD) + HISTORY * (LEVELS + len(SEP)) - len(SEP) + len(TAIL) + LEVELS - 1


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--folder", default="", help="a Hugging Face folder (bench.anchor_lora writes one)")
  p.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(SHAPES),
                 help="without --folder: this shape with random weights")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  common.add_cpu_devices(p)
  p.add_argument("--out", default=None, help="default bench/results/llm-lora-<platform>.json")
  args = p.parse_args()
  common.set_cpu_devices(args)
  from jaxrec.optim import TrainState, optimizer_and_schedule
  from jaxrec.recommender import decoder_steps
  model, params = model_and_params(args)
  tx, _ = optimizer_and_schedule(1e-4, 0.0, 1000, 0, 0.0, "constant",
                                 trainable=decoder_steps.trainable(model))
  state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  step = jax.jit(functools.partial(decoder_steps.train_step, model=model, tx=tx), donate_argnums=0)
  codes, key = codes_table(), jax.random.key(1)
  batches = [batch_of(args.batch, i + 1) for i in range(args.warmup + args.steps)]
  t = time.perf_counter()
  compiled = step.lower(state, batches[0], codes, key).compile()
  compile_s = time.perf_counter() - t
  ca = compiled.cost_analysis()
  flops = float((ca[0] if isinstance(ca, (list, tuple)) else ca).get("flops", 0.0))
  times = []
  for i, b in enumerate(batches):
    t = time.perf_counter()
    state, out = compiled(state, b, codes, key)
    jax.block_until_ready(out)
    if i >= args.warmup:
      times.append(time.perf_counter() - t)
  ms = 1000 * float(np.median(times))
  n = sum(int(x.size) for x in jax.tree.leaves(params))
  trained = sum(int(x.size) for x, t in zip(jax.tree.leaves(params),
                jax.tree.leaves(decoder_steps.trainable(model)(params))) if t)
  tokens = args.batch * sequence_length()
  result = {"framework": "jaxrec", "model": args.folder or args.shape, "dtype": args.dtype,
            "batch": args.batch, "sequence": sequence_length(), "parameters": n,
            "parameters_trained": trained, "step_ms": round(ms, 1),
            "step_ms_min_max": [round(1000 * min(times), 1), round(1000 * max(times), 1)],
            "tokens_per_s": round(tokens / ms * 1000, 1), "gflop_per_step": round(flops / 1e9, 2),
            "achieved_gflops": round(flops / ms / 1e6, 1), "compile_s": round(compile_s, 1),
            "loss_first_last": [float(out["loss"])]}
  print(result, flush=True)
  path = common.write_json(common.result_path(f"llm-lora-{common.platform()}.json", args.out), result)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
