"""ETEGRec: tokenizer and recommender trained end to end by alternating optimization with
sequence-item (SIA) and preference-semantic (PSA) alignment (jaxrec/methods/etegrec.py).

  python -m jaxrec.train --config configs/etegrec.py                # synthetic data
  python -m jaxrec.train --config configs/etegrec.py:instruments    # the shared Amazon set

Variants (anything not listed is configs/tiger.py's same variant):
  (default)    synthetic data, the tokenizer on the planted 32-d `cf` embeddings (ETEGRec
               tokenizes collaborative embeddings), 3 x 64 codes, code dim 32, small T5;
               20 alternating epochs (10 tokenizer, 10 recommender), then up to 6
               fine-tuning epochs.
  instruments  Amazon Instruments 2018 5-core with LETTER's 32-d SASRec embeddings as the
               item embedding (the paper: 256-d SASRec, which
               `--config.tokenizer.feature=cf "--config.data.features=()"` derives in-run with
               config.cf, d 256). Official settings: RQ-VAE in -> 512 -> 256 -> 128,
               3 x 256 codes + the collision level; T5 6 + 6 layers, d_model 128, d_ff 512,
               4 heads x 64, dropout 0.1; batch 512, 400 alternating epochs (cycle 2),
               recommender AdamW lr 5e-3, tokenizer lr 1e-4, weight decay 0.05, clipping 1,
               cosine with warm-up 8,000 / 4,000 steps, alignment off for 10 epochs; then
               fine-tuning lr 5e-4 for up to 100 epochs (patience 10).
               Paper (Amazon 2023 Instrument, a different set): R@5 .0402, R@10 .0624,
               N@5 .0260, N@10 .0331.
  instruments_paper  instruments with the official code's protocol (BishopLiu/ETEGRec
               58d9736; docs/protocols.md cites each line): tokenizer pre-trained on a 256-d
               SASRec trained in-run (10,000 epochs, linear decay after 50 warm-up epochs,
               no dead-code re-seeding, Xavier-normal MLP, codebooks by k-means of 100
               iterations on the first training batch's residuals, each epoch's last batch
               shorter); batch 2,048 = 512 x 4 accumulated, i.i.d. batches,
               history up to 50; every weight N(0, 0.02), unscaled logits; SIA's softmax
               over +distance (the code); the recommender's cosine ends at 0.53 x peak (its
               scheduler only advances in recommender epochs); test decoding unconstrained
               (beam 20, top 10 scored); the tokenizer kept is the pre-training's
               lowest-collision epoch (checked every 50 epochs), as the official
               best_collision_model.pth. PSA's in-batch negatives match the official
               per-process ones: each of the 4 accumulated steps is one process's batch of
               512 (docs/protocols.md).
  scientific   Amazon Industrial & Scientific 2018 with the official recipe: the official
               config/scientific.yaml (the model, 400 epochs in cycles of 2, lr 5e-3 / 1e-4,
               weight decay 0.05, warm-up 8,000 / 4,000 steps, alignment from epoch 10, early
               stop after 15 evaluations every 2 epochs, histories up to 50, 3 x 256 codes + a
               256-code collision level) with everything instruments_paper takes from the
               official code: the 256-d SASRec `cf` derived in-run as the tokenizer's input
               (the official scientific_emb_256.npy is a 256-d SASRec item table), its
               pre-training (10,000 epochs, linear decay, Xavier-normal MLP, k-means of 100
               iterations on the first batch, short last batches, no re-seeding, the
               lowest-collision epoch kept), batch 2,048 = 512 x 4 accumulated (512 per
               process x 4 processes), every weight N(0, 0.02) (the SIA / PSA adapters too)
               and unscaled logits, SIA's softmax over +distance, the recommender's cosine
               built over every epoch's steps and advanced in recommender epochs only
               (`etegrec.rec_schedule='all'`: it ends where the official one ends, on any
               data set). The warm-ups are the official ones' share of the schedule
               (`etegrec.warmup_frac` 0.0394: 8,000 of 203,200 scheduler steps on the
               official Scientific set, a step being a batch of 512). The official code run
               as it is on this set (`etegrec.warmup_frac=0`: 8,000 steps) never ends its
               warm-up: the schedule advances 28 micro-batches of 512 a recommender epoch,
               5,600 in all 200, so its lr would climb to 3.5e-3 at most (1.2e-3 at epoch
               132); with the share the lr is at its 5e-3 peak from epoch 32 (an ablation
               row). Test decoding: free (official) or `train.decode=constrained`.
  tiny         seconds; tests.

etegrec:
  cycle               epochs per cycle; epoch e trains the tokenizer when e % cycle == 0
  warm_epochs         alignment weights are 0 before this epoch
  w_sia, w_psa        alignment weights: 1e-4 / 3e-4 as the official code (the paper reports
                      SIA 3e-4 and PSA 1e-4 as best: --config.etegrec.w_sia=3e-4 ...)
  sia_sign            'negative': softmax(-distance), paper Eq. 6; 'positive': official code
  psa_temperature     0.07
  tok_lr              tokenizer learning rate (train.lr is the recommender's)
  rec_warmup_steps, tok_warmup_steps   linear warm-up of each cosine schedule, in
                      micro-batches (the official scheduler's steps: it counts the unsharded
                      loader's batches of 512 and accelerate steps it once per process at
                      each update of 4 x 512)
  warmup_frac         > 0: each warm-up is this fraction of its schedule's steps instead (the
                      official share on another data set's size: `scientific`)
  finetune_epochs     0 skips the final stage
  finetune_lr, finetune_patience, finetune_eval_every
  alternation         'alternate' (the method); ablations: 'joint' (both models updated in
                      every step on all the losses at once) or 'frozen' (the pre-trained
                      tokenizer never trains; SIA and PSA train the recommender only)
  rec_schedule        'stage': the recommender's cosine spans its own steps; 'all': the
                      official trainer's (over every epoch's steps, advanced in recommender
                      epochs only)
  short_rows          > 0 (the `_paper` and `scientific` variants: 0.875): that share of
                      each batch, its shortest histories, runs as a part of its own padded to
                      the bucket holding 95 % of the training histories, the rest at the
                      batch's length (the same states up to float rounding; dropout draws
                      differ): i.i.d. batches are padded to their longest history (on
                      Scientific 23.4 items on average for a mean of 3.3): a step 3.5x faster
                      there, half the memory (bench/README.md). 0: the whole batch at its length
train.epochs / eval_every / patience are the alternation stage's.
"""
import os

import ml_collections

from jaxrec.config import load_config_module


def _tiger():
  return load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiger.py"))


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  variant = variant or "default"
  if variant not in ("default", "tiny", "instruments", "instruments_paper", "scientific"):
    raise ValueError(f"unknown etegrec variant {variant!r}")
  paper = variant.endswith("_paper") or variant == "scientific"   # the official recipe
  variant = variant.removesuffix("_paper")
  cfg = _tiger().get_config(variant)
  cfg.method = "etegrec"
  t, m, tr = cfg.tokenizer, cfg.model, cfg.train
  t.collision = "suffix"
  cfg.etegrec = ml_collections.ConfigDict(dict(
      cycle=2, warm_epochs=10, w_sia=1e-4, w_psa=3e-4, sia_sign="negative",
      psa_temperature=0.07, tok_lr=1e-4, rec_warmup_steps=8000, tok_warmup_steps=4000,
      finetune_epochs=100, finetune_lr=5e-4, finetune_patience=10, finetune_eval_every=1,
      rec_schedule="stage", warmup_frac=0.0, alternation="alternate", short_rows=0.0))
  e = cfg.etegrec
  m.user_buckets = 0
  tr.lr = 5e-3
  tr.weight_decay = 0.05
  tr.clip = 1.0
  if variant != "tiny":
    cfg.cf.model.d = 256           # a derived `cf` feature: ETEGRec's official 256-d SASRec
  if variant in ("instruments", "scientific"):
    t.hidden = (512, 256)
    t.code_dim = 128
    t.levels = 3
    t.modes = ("hard",) * 3
    m.d_model, m.d_ff, m.heads, m.head_dim = 128, 512, 4, 64
    m.enc_layers = m.dec_layers = 6
    tr.batch_size = 512
    tr.epochs = 400
    tr.eval_every = 2
    tr.patience = 15
  if variant == "default":
    cfg.data.features = ("content", "cf")
    t.feature = "cf"
    tr.epochs = 20
    tr.eval_every = 2
    tr.patience = 3
    e.warm_epochs = 4
    e.rec_warmup_steps = 60
    e.tok_warmup_steps = 30
    e.finetune_epochs = 6
    e.finetune_patience = 2
  if variant == "tiny":
    cfg.data.features = ("content", "cf")
    t.feature = "cf"
    tr.epochs = 4
    tr.eval_every = 2
    e.warm_epochs = 2
    e.rec_warmup_steps = 2
    e.tok_warmup_steps = 1
    e.finetune_epochs = 2
  if paper:
    cfg.variant = variant + ("_paper" if variant == "instruments" else "")
    cfg.data.features = ()                 # `cf` derived in-run: SASRec, d 256
    cfg.data.max_len = 50
    cfg.data.buckets = (2, 4, 6, 8, 12, 16, 20, 30, 40, 50)
    cfg.data.batching = "iid"
    cfg.data.whole_updates = True          # each process's last batch is shorter (DDP)
    t.feature = "cf"
    t.epochs, t.schedule, t.warmup_epochs, t.reseed_every = 10000, "linear", 50, 0
    t.lr, t.weight_decay, t.batch_size, t.clip = 1e-3, 1e-4, 1024, 1.0
    t.log_every, t.save_every = 50, 500    # collisions checked every 50 epochs (official)
    t.keep = "lowest_collision"
    t.kmeans_sample, t.kmeans_iters = "first_batch", 100   # vq.py:69-70, main.py:50 (sklearn)
    t.last_batch = "short"                 # RQVAE/main.py:83-85, no drop_last
    t.init = "xavier"                      # RQVAE/models/layers.py:33-38
    tr.batch_size, tr.accumulate = 512, 4  # 512 per process x 4 processes
    tr.lr_end = 0.53
    tr.decode, tr.beam = "free", 20
    m.init_std, m.logit_scale = 0.02, False
    e.sia_sign = "positive"
    e.short_rows = 0.875                   # the i.i.d. batches' shortest 7/8 run short (speed)
  if variant == "scientific":
    t.suffix_size = 256                    # the official 4th level: 256 codes
    # the official 8,000-step warm-up is 3.94 % of its schedule on its Scientific set (Amazon
    # 2023 5-core: 412.9K interactions of 51.0K users, so 259.9K training samples, 508
    # batches of 512 per epoch, each a scheduler step (accelerate steps the schedule once per
    # process), 400 epochs: 203,200); the same share of this set's schedule
    e.warmup_frac = 0.0394
    tr.lr_end = 0.0
    e.rec_schedule = "all"
  return cfg
