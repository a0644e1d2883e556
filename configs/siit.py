"""SIIT (reconstruction; jaxrec/methods/siit.py): the T5 recommender refines its own item
IDs: multi-task training (history -> next ID, and item content -> its ID), and every
`refine_every` epochs each item's ID is re-decoded from the model, rescored with a usage
penalty and assigned greedily without collisions; `rounds` times.

  python -m jaxrec.train --config configs/siit.py                  # synthetic, from TIGER's IDs
  python -m jaxrec.train --config configs/siit.py --config.tokenizer.source=random
  python -m jaxrec.train --config configs/siit.py --config.siit.init_codes=runs/simcit

No code or hyper-parameter table was released: every value below is this reconstruction's.
Variants (everything not listed is configs/tiger.py's same variant): default, tiny,
instruments (content = the 32-d SASRec embedding), scientific (content = MiniLM text);
decoder, tiny_decoder, scientific_decoder with tiger.py's decoder-only recommender;
scientific_llm: the paper's setting, SIIT on a pretrained LLM ($JAXREC_LLM_DIR or
model.path, tiger.py:llm_model_config: LoRA, LC-Rec's prompt and fine-tuning recipe, 4 x
siit.refine_every = 32 epochs so that the 3 refinement rounds happen, the checkpoint kept
by decoded valid NDCG@10 rather than LC-Rec's loss; needs weights and an accelerator).
There the LLM also learns LC-Rec's title -> ID task, but a round decodes each item's ID
from the soft tokens of its text embedding (`siit.feature`), as the T5 does, not from its
title: a reconstruction's choice, the paper's prompt for it not being available here;
tiny_llm: the same on the tests' tiny random Qwen2 (seconds on a CPU, for CI).

siit:
  init_codes     "" (the start IDs come from `tokenizer`: rqvae / given / random) or a
                 workdir with codes.npz (another method's IDs) or a table's .npz file
                 (ETEGRec's final IDs: W/codes_final.npz)
  feature        the item content vector of the alignment task (the tokenizer's input)
  soft_tokens    encoder input vectors the content vector is projected to (4)
  align_ratio    alignment items per history sample in every step (0.25: one A per four R;
                 a multi-task data set with one A sample per item has items / training
                 samples: 0.27 on Scientific)
  align_loss     'mixed': the per-sample mean over both tasks' samples, as one batch of a
                 mixed multi-task data set (LC-Rec's; how SIIT mixes them is not in the
                 text available here); 'sum': R's mean + A's mean, which weighs an A item
                 1 / align_ratio = 4 times an R sample (this reconstruction before
                 2026-12-05, and the 40-epoch Scientific rows in the README)
  refine_every   epochs between refinements; rounds: how many (0: no refinement)
  first_refine   epochs before the first round (0: refine_every); e.g. one round once the
                 alignment task is learnt (`align_top1` in metrics.jsonl says how well)
  beam           task-A beam over the full code space per level (10)
  usage_penalty  score - usage_penalty * log(1 + items whose best candidate has that
                 first-level code) (0.5)
  capacity       most items per code at any level (0: no cap)
  keep_margin    an item keeps its ID unless its best task-A candidate's log-probability
                 beats its current ID's by more than this (1.0; < 0: off, every item takes
                 its best free candidate). Current IDs stay reserved for their items. On the
                 synthetic default (seed 0): off, round 1 changed 48 % of the IDs and valid
                 R@10 fell .114 -> .036, test R@10 / N@10 .1057 / .0549; 1.0, round 1 changed
                 25 % and valid R@10 .114 -> .113, test .2537 / .1425 (TIGER .2857 / .1594)
  movers         'better': an item whose best candidate beats its ID by the margin but is
                 taken moves only to a lower candidate that beats it by the margin too, else
                 keeps its ID; 'any': to any free candidate, however low (this
                 reconstruction before 2026-12-06, and the converged Scientific rows made
                 before it: README)
"""
import os

import ml_collections

from jaxrec.config import load_config_module


def _tiger():
  return load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiger.py"))


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  variant = variant or "default"
  if variant in _tiger().DECODER_VARIANTS:
    return _tiger().decoder_variant(get_config, variant)
  if variant in ("tiny_llm", "scientific_llm"):
    cfg = _tiger().llm_variant(get_config, variant)
    if variant == "scientific_llm":
      cfg.train.epochs = 4 * cfg.siit.refine_every     # room for the refinement rounds
      # LC-Rec keeps the lowest validation loss (patience 4): across a round the loss is
      # another table's targets', so a round's moved items would end the run and its best
      # checkpoint would predate the round; decoded NDCG@10 instead, patience a round's span
      cfg.train.select, cfg.train.patience = "ndcg@10", cfg.siit.refine_every
    return cfg
  if variant not in ("default", "tiny", "instruments", "scientific"):
    raise ValueError(f"unknown siit variant {variant!r}")
  cfg = _tiger().get_config(variant)
  cfg.method = "siit"
  cfg.siit = ml_collections.ConfigDict(dict(
      init_codes="", feature=cfg.tokenizer.feature, soft_tokens=4, align_ratio=0.25,
      refine_every=4, rounds=3, beam=10, usage_penalty=0.5, capacity=0,
      keep_margin=1.0, first_refine=0, align_loss="mixed", movers="better"))
  if variant == "tiny":
    cfg.siit.refine_every = 1
    cfg.siit.rounds = 1
    cfg.siit.beam = 4
  if variant == "instruments":
    cfg.siit.refine_every = 20
  if variant == "scientific":
    cfg.siit.refine_every = 8
  return cfg
