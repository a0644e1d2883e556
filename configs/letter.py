"""LETTER: TIGER's recommender on a collaborative and diversity regularized tokenizer
(jaxrec/methods/letter.py), Sinkhorn on the last level, Sinkhorn collision re-assignment.

  python -m jaxrec.train --config configs/letter.py                # synthetic data
  python -m jaxrec.train --config configs/letter.py:instruments    # the shared Amazon set
  python -m jaxrec.tokenize --config configs/letter.py:instruments --workdir runs/letter-ids
  ... --config.tokenizer.letter.alpha=0     # ablation without L_cf (beta=0: without L_div)

Variants (everything not listed is configs/tiger.py's same variant; decoder, tiny_decoder
and scientific_decoder: default, tiny and scientific with tiger.py's decoder-only
recommender):
  (default)    synthetic data; the tokenizer encodes the 64-d `content` feature and L_cf
               pulls towards the generator's planted 32-d `cf` embedding (built from the
               true transition structure, standing in for a trained SASRec), 3 x 64 codes
               with Sinkhorn on level 3.
  instruments  Amazon Instruments 2018 5-core. The only item features shipped are
               LETTER's own 32-d SASRec embeddings, so they are both the tokenizer input
               and the L_cf target (the paper encodes LLaMA text embeddings instead).
               4 x 256 codes, code dim 32, alpha 0.01, beta 1e-4 (the official
               Instruments script); a halving encoder (32 -> 256 -> 128 -> 64 -> 32 on
               these inputs), where the official code keeps its 2048 -> ... -> 64 widths
               for any input (instruments_paper has them). Published LETTER-TIGER: R@5 .0909,
               R@10 .1122, N@5 .0763, N@10 .0831.
  instruments_paper  instruments with the official protocols of both halves (docs/
               protocols.md): the tokenizer for 10,000 epochs (the released IDs come from
               the epoch-9,999 checkpoint of a 20,000-epoch run) at a constant lr 1e-3, no
               warm-up, no gradient clipping, no dead-code re-seeding; collisions left
               after 20 Sinkhorn rounds stay shared IDs; the recommender as
               tiger:letter_ids_paper (batch 1,024, loss selection, i.i.d. batches, ...);
               the encoder widths 2048, 1024, 512, 256, 128, 64 (RQ-VAE/main.py:47) and
               the MLPs' Xavier-normal init, each epoch's last batch shorter (no
               drop_last). Not matched: LLaMA text embeddings as input
               (not shipped; the 32-d SASRec ones instead).
  instruments_lcrec  LETTER's IDs on an LLM as the paper's LC-Rec instantiation: the
               instruments tokenizer, then the Hugging Face folder $JAXREC_LLM_DIR (or
               model.path; LLaMA-7B in the paper) with LC-Rec's prompt, LoRA (r 8, alpha
               32) and training (lr 5e-5, 4 epochs, batch 128, bf16, best valid loss, the
               LM loss over the vocabulary, the item2index / index2item tasks on the items'
               titles: <name>.item.json, which the shared copy lacks; without them
               --config.data.align.tasks='()'). Needs the weights and an accelerator
               (tiger.py:llm_model_config, lcrec_training).
  tiny_lcrec   the same on the tiny random Qwen2 of the tests (tests/fixtures/hf/qwen2),
               its per-level loss and no alignment tasks (the synthetic items have no
               text): seconds on a CPU, for CI.
  scientific   Amazon Industrial & Scientific 2018: the tokenizer on the MiniLM text
               embeddings (python -m jaxrec.embed first), L_cf towards a 32-d SASRec trained
               in-run on the interactions (`cf`); 3 x 256 codes, Sinkhorn on level 3. The
               tokenizer's budget and encoder are TIGER's `scientific` ones (300 epochs,
               512-256-128), the same as the TIGER row it is compared with; the official
               recipe (10,000 epochs, widths 2048..64) is a queued control (about 5 h a fit
               on this CPU).
  tiny         seconds; tests.

tokenizer.letter:
  alpha            L_cf weight (0.01 official Instruments script; 0.02 in the paper's grid)
  beta             L_div weight (1e-4 official Instruments script; 1e-3 in the paper's grid)
  cf_feature       the data set feature holding the collaborative embeddings (code_dim wide)
  n_clusters       groups per level for L_div (10, official code; the paper writes K)
  cluster_iters    balanced k-means iterations per re-clustering (every epoch)
  cf_temperature   L_cf logits scale (1, official)
  div_temperature  L_div logits scale (1, official)
Dead-code re-seeding is off (tokenizer.reseed_every=0), as in the official code, so that
the code usage figures show what L_div does. train.tau is the ranking-guided loss'
temperature: 1.0 as the released scripts (plain cross-entropy); the paper finds 0.7-1.2
helpful.
"""
import os

import ml_collections

from jaxrec.config import load_config_module
from jaxrec.tokenizer import rqvae


def _tiger():
  return load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiger.py"))


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  variant = variant or "default"
  if variant in _tiger().DECODER_VARIANTS:
    return _tiger().decoder_variant(get_config, variant)
  if variant in ("tiny_lcrec", "instruments_lcrec"):     # LETTER's IDs on an LLM (LC-Rec)
    return _tiger().llm_variant(get_config, variant, "_lcrec")
  if variant not in ("default", "tiny", "instruments", "instruments_paper", "scientific"):
    raise ValueError(f"unknown letter variant {variant!r}")
  paper, variant = variant.endswith("_paper"), variant.removesuffix("_paper")
  cfg = _tiger().get_config(variant)
  cfg.method = "letter"
  t = cfg.tokenizer
  t.letter = ml_collections.ConfigDict(dict(
      alpha=0.01, beta=1e-4, cf_feature="cf", n_clusters=10, cluster_iters=10,
      cf_temperature=1.0, div_temperature=1.0))
  t.modes = ("hard",) * (t.levels - 1) + ("sinkhorn",)
  t.sinkhorn_eps = 0.003
  t.sinkhorn_iters = 50
  t.collision = "sinkhorn"
  t.sinkhorn_rounds = 20
  t.reseed_every = 0
  t.lr = 1e-3
  t.weight_decay = 1e-4
  cfg.train.tau = 1.0
  if variant in ("default", "tiny"):
    cfg.data.features = ("content", "cf")
  if variant == "tiny":
    cfg.data.synthetic.cf_dim = t.code_dim    # L_cf needs CF width = code width
    t.letter.n_clusters = 4
  if variant == "instruments":
    del t["hidden"]                           # a tuple in tiger.py; here a rule
    t.hidden = "halving"                      # widths halve from the input (rqvae.py)
    t.levels = 4
    t.modes = ("hard", "hard", "hard", "sinkhorn")
    t.letter.cf_feature = "sasrec32"
  if paper:
    cfg.variant = variant + "_paper"
    del t["hidden"]
    t.hidden = rqvae.LETTER_WIDTHS                      # RQ-VAE/main.py:47, any input
    t.init = "xavier"                                   # models/layers.py:33-38
    t.epochs, t.schedule, t.warmup_epochs, t.clip = 10000, "constant", 0, 0.0
    t.batch_size, t.lr, t.weight_decay = 1024, 1e-3, 1e-4
    t.kmeans_method, t.kmeans_iters = "constrained", 10   # vq.py:50-61
    t.last_batch = "short"                              # main.py:91-93, no drop_last
    t.log_every, t.save_every = 500, 500
    _tiger().letter_tiger_paper(cfg)
  return cfg
