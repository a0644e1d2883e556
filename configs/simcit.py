"""SimCIT: a residual quantizer trained only contrastively over several item views
(jaxrec/methods/simcit.py), then TIGER's T5 over its IDs.

  python -m jaxrec.train --config configs/simcit.py                 # synthetic: content + cf
  python -m jaxrec.train --config configs/simcit.py:scientific      # text + cf (embed first)
  ... --config.tokenizer.simcit.views="('text',)"                   # a single-view SimCIT

Variants (everything not listed is configs/tiger.py's same variant; decoder, tiny_decoder
and scientific_decoder: default, tiny and scientific with tiger.py's decoder-only
recommender; scientific_llm: SimCIT's IDs on a pretrained LLM as the paper evaluates them
in LLM-based recommendation ($JAXREC_LLM_DIR or model.path, tiger.py:llm_model_config, LC-Rec's
prompt and recipe; needs weights and an accelerator); tiny_llm: on the tests' tiny Qwen2):
  (default)    synthetic data, views `content` (64-d) and the planted `cf` (32-d), as LETTER's
               and ETEGRec's defaults read it; 3 x 64 codes; 300 tokenizer epochs.
               `--config.data.features="('content',)"` derives `cf` from the interactions
               instead (a 32-d SASRec trained first; config.cf, cached): a learnt
               collaborative embedding, like the released config's 32-d `cf_emb`. Test
               R@10 / N@10, 3 seeds (README), with the released InfoNCE temperature 0.07:
               planted .0866 / .0431, derived .1057 / .0532; with this variant's 0.5 (see
               temperature below): planted .1814 / .0988 (3.2x / 3.7x most-popular).
  instruments  Amazon Instruments 2018: the only view shipped is LETTER's 32-d SASRec
               embedding (a single-view SimCIT); 3 x 256 codes.
  scientific   Amazon Industrial & Scientific 2018: views `text` (MiniLM, `python -m
               jaxrec.embed` first) and `cf` (a 32-d SASRec trained in-run); 3 x 256 codes;
               the released step (2 x 256 items, each 256 its own negatives); 1,000
               tokenizer epochs (the released 15,000: `scientific_paper`). At TIGER's 300
               the fit is cut short while it learns: its InfoNCE (two views, chance 12.47)
               ended at 5.86 in seed 1 and at 9.20 in seed 2, whose run then stopped on 132
               items in one ID; 1,000 epochs bring seed 2 to 1.55 (2.81 at epoch 300 of
               its longer cosine), 3,464 distinct IDs, largest group 11, in 335 s beside
               the queue (`tokenizer.epochs=300`: the earlier rows, an ablation).
  scientific_paper  scientific with the same released tokenizer setting (the claims issue's
               control for the released budget: about 2 h of fit on a 2-core CPU).
  instruments_paper  instruments with the released tokenizer setting (alibaba/SimCIT):
               unit Gumbel noise, codebooks uniform in [0, 1), L = 2 x K = 128, 15,000
               epochs, steps of 2 x 256 items each 256 its own negatives (the released
               2 processes), every Linear initialised as PyTorch's; collisions still
               resolved by the appended level (the official code leaves them).
  tiny         seconds; tests.

tokenizer.simcit (official values from alibaba/SimCIT's config and train script):
  views           item features, each L2-normalised on load
  hidden, dim     per-view MLP widths 512, 384, 256 -> 128, no bias, SiLU
  gumbel_tau      0.2, the soft assignment's temperature
  gumbel_scale    0.0 (jaxrec's default): the scale of the Gumbel noise added to -distance
                  before the softmax; 1.0 is the official code. A deliberate deviation: the
                  encoder's first outputs are small (squared residual distances ~1e-3), so
                  unit Gumbel noise decides the soft assignment alone, each step mixes random
                  codewords and nothing is learnt within budgets of hundreds of epochs (the
                  official schedule is 15,000): synthetic default, 300 epochs, scale 1.0:
                  InfoNCE 5.63 per view (chance 6.24), codes used 36 / 16 / 22 of 64, 211
                  items in one ID, the run fails; scale 0.0, 100 epochs: InfoNCE 2.50 / 1.96,
                  codes used 57 / 54 / 56, largest group 32. Scientific (text + cf), 200
                  epochs, scale 0.0: 3,290 distinct IDs for 3,541 items, largest group 13.
                  What scale 0.0 also does (found 2026-12-06): at these distances the
                  noise-free softmax at gumbel_tau 0.2 is about uniform (weight .005 on the
                  nearest of 256 codes), so the fit trains the soft mixture and never the
                  codewords the IDs are read from (its hard IDs' InfoNCE 1.90 / 1.69 against
                  the soft .87 / .90, Scientific seed 1); gumbel_tau 0.002 with scale 0.01
                  (the released noise-to-temperature ratio) samples about one code per level
                  and its IDs' InfoNCE is the soft one (.89 / .59): bench/README.md, SimCIT:
                  how soft its codes train. Its row (seed 1) led this variant on validation
                  (N@10 .1034 against .1019) and stands for SimCIT in the claims
                  (bench/claims.py, SIMCIT_CHOSEN); this variant's values are unchanged, so
                  that its rows keep their workdirs.
  temperature     InfoNCE temperature: 0.07 as released in every variant but the synthetic
                  default, 0.5 there, chosen on its validation split (seed 0, 15 epochs;
                  valid R@10 / N@10): 0.07 .0973 / .0498, 0.2 .1430 / .0755, 0.5 .1820 / .1004,
                  1.0 .1910 / .1078, 2.0 fails (136 items in one ID). At 0.07 instance
                  discrimination spends the codes on the items' isotropic noise and the first
                  level keeps little of the planted subtopic (NMI .575); a softer InfoNCE keeps
                  the shared structure (.831 at 0.5) at the price of more shared IDs (482
                  distinct over 3 levels of 2,000, largest group 40). 0.5 rather than 1.0:
                  1.0's largest group (55) sits near the appended level's 64, and 2.0 fails.
                  With 0.5 the largest groups are 40 / 49 / 45 (seeds 0-2) on the planted
                  `cf` and up to 65 on a learnt one, so this variant's appended level has 128
                  codes (tokenizer.suffix_size; 64 stopped the learnt-cf run of seed 2).
  w_div           1.0, codebook Gram penalty; w_commit 0 (computed with weight 0 in the code)
  codebook_init   kmeans (the code's default; jaxrec's default) | uniform (the released
                  config: codewords uniform in [0, 1)^128 all lie far from the encoder's
                  outputs, so every item takes the smallest-norm codeword and, within the
                  budgets here, the IDs collapse: tiny, 20 epochs: 1 / 2 / 2 codes used,
                  2 distinct IDs for 120 items; k-means: 16 / 16 / 15, 115 distinct)
  w_recon         0.0 (SimCIT has no reconstruction); > 0: the control that adds one back,
                  w_recon x the sum over views of each unit-norm view's squared L2 error,
                  decoded from the quantized vector by a per-view MLP (the encoder's widths
                  reversed)
  warmup_frac     100 / 15,000 of all steps (the released 100 warm-up epochs of 15,000)
  negatives       global (the whole batch) | local (each device's share: the code's per-GPU
                  negatives when a device is a process; `groups` fixes the count instead)
  prefix_loss     False (the released forward) | True: each view's InfoNCE averaged over the
                  prefixes of the levels (1, 2, ..., L codewords summed), the alternative
                  left commented out in the official forward (ssid_rq.py:165-166, 172)
  holdout         0.0: every item trains and the last epoch's tokenizer codes the catalogue;
                  > 0: that share of the items is held out of training (the released
                  val.txt) and the logged epoch with the lowest held-out loss (the InfoNCE
                  of hard IDs plus w_div x the Gram term: the released eval loss sums every
                  loss term) codes every item (the released trainer's checkpoint_best.pt,
                  evaluated every 1,000 epochs, here every tokenizer.log_every: 1,000 in
                  the `_paper` variants; its early stop is not reproduced: tokenizer.epochs
                  caps the fit)
  groups          0: the negatives follow `negatives`; > 0: each batch split into that many
                  parts, each its own negatives. The released script runs 2 processes
                  (torchrun --nproc_per_node=2) of batch 256 each (DistributedSampler), each
                  process's InfoNCE over its own 256: `scientific` and the `_paper` variants
                  set tokenizer.batch_size=512, groups=2 (at 300 epochs half the updates of
                  the earlier 256: on Scientific 3,432 distinct IDs against 3,454, level-1
                  perplexity 124.9 against 139.4); default, tiny and instruments keep the
                  earlier 256 with global negatives (their rows in the README)
  init            'flax' (Flax's Dense: lecun normal kernels, zero biases; a deliberate
                  deviation) | 'torch' (the released code's nn.Linear default: kernel and
                  bias uniform in +-1/sqrt(fan_in); the `_paper` variants, with its uniform
                  codebooks). With the k-means codebooks and no Gumbel noise, 'torch' does not
                  learn: the four bias-free encoder layers start the encodings (and so the
                  codewords) far smaller than the projection's bias, every projected vector is
                  about that bias, and on Scientific the InfoNCE sits at chance from epoch 50
                  (6.2364 = log 511 per view) with 22 distinct IDs after 300 epochs; 'flax'
                  reaches 2.28 / 2.10 and 3,432 IDs with the same step
                  (bench/experiments/simcit_gap.py, bench/README.md)
tokenizer: AdamW lr 2e-4, weight decay 1e-3, batch 256 per process (released script); jaxrec's
defaults
L = 3 levels of K = 256 (released: L = 2, K = 128; the code's defaults L = 3, K = 512);
collisions resolved by the appended level (the official code does not resolve them).
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
    return _tiger().llm_variant(get_config, variant)
  if variant not in ("default", "tiny", "instruments", "instruments_paper", "scientific",
                     "scientific_paper"):
    raise ValueError(f"unknown simcit variant {variant!r}")
  paper, variant = variant.endswith("_paper"), variant.removesuffix("_paper")
  cfg = _tiger().get_config(variant)
  cfg.method = "simcit"
  t = cfg.tokenizer
  t.source = "simcit"              # its own tokenizer (not the RQ-VAE; tokenizer.feature unused)
  t.simcit = ml_collections.ConfigDict(dict(
      views=("content", "cf"), hidden=(512, 384, 256), dim=128, gumbel_tau=0.2, gumbel_scale=0.0,
      temperature=0.07, w_div=1.0, w_commit=0.0, codebook_init="kmeans",
      warmup_frac=100 / 15000, negatives="global", prefix_loss=False, holdout=0.0,
      w_recon=0.0, groups=0, init="flax"))
  t.lr = 2e-4
  t.weight_decay = 1e-3
  t.batch_size = 256
  t.collision = "suffix"
  if variant in ("default", "tiny"):
    cfg.data.features = ("content", "cf")
  if variant == "default":
    t.simcit.temperature = 0.5     # chosen on the synthetic validation split (docstring)
    t.suffix_size = 128            # its largest ID groups: 40-49 (planted cf), 65 (learnt cf)
  if variant == "tiny":
    t.simcit.hidden = (32,)
    t.simcit.dim = 16
    t.batch_size = 64
  if variant == "instruments":
    t.simcit.views = ("sasrec32",)
    t.epochs = 300
  if variant == "scientific":
    t.simcit.views = ("text", "cf")
    t.epochs = 1000                # 300 stops the fit while it learns (docstring)
  if variant == "scientific" or paper:
    # the released run's step: 2 processes x 256 items, each its own negatives
    t.batch_size = 512
    t.simcit.groups = 2
  if paper:
    cfg.variant = variant + "_paper"
    t.simcit.update(gumbel_scale=1.0, codebook_init="uniform", init="torch")
    t.levels, t.codebook_size, t.epochs = 2, 128, 15000
    t.modes = ("hard",) * 2
    # evaluated (and, with holdout > 0, the checkpoint chosen) every 1,000 epochs as the
    # released trainer (trainers/batch_trainer.py:41-44)
    t.log_every, t.save_every = 1000, 500
  return cfg
