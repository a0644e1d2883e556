"""SASRec (Kang & McAuley, ICDM 2018): the sequential baseline over item ids, full ranking.

  python -m jaxrec.train --config configs/sasrec.py                # synthetic data
  python -m jaxrec.train --config configs/sasrec.py:instruments    # the shared Amazon set

Variants (data as configs/tiger.py's same variant; same leave-one-out splits, history cap
data.max_len = 20 and metrics as the generative methods):
  (default)    synthetic data: beats most-popular by a wide margin in about a minute.
  instruments  Amazon Instruments 2018 5-core, interactions only.
  scientific   Amazon Industrial & Scientific 2018, interactions only.
  tiny         seconds; tests.

model:
  d, blocks, heads   width 64, 2 blocks, 1 head (the paper's Amazon settings)
  dropout            0.2 here; the paper uses 0.5 on its sparse Amazon sets (a config value)
  loss               ce (full softmax, default) | sampled (softmax over `negatives` uniform
                     items shared by the batch) | bce (the paper's: one negative per position)
  negatives          sampled negatives (loss='sampled'; must be < the catalogue)
  item_input         id (a free vector per item, the paper) | codes (the sum of one vector
                     per level of the item's semantic ID: no parameter per item, as a
                     generative recommender over the same IDs) | id+codes (both summed);
                     input and tied output alike
  codes              with codes: a workdir holding codes.npz (a generative run's) or a
                     table's .npz file (W/codes_final.npz), e.g.
                     --config.model.item_input=codes --config.model.codes=runs/tiger
train: as the T5's (configs/tiger.py), with Adam's learning rate 1e-3, no weight decay, a
constant schedule (the official code) and evaluation every `eval_every` epochs.

The end of a run writes the best checkpoint's item table as <name>.sasrec<d>.npy in its
workdir. Other methods derive the `cf` feature the same way in-run: `config.cf` holds this
file's model and train settings (cf_config below).
"""
import os

import ml_collections

from jaxrec.config import load_config_module


def _tiger():
  return load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiger.py"))


def model_config(variant: str = "default") -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.d = 64
  m.blocks = 2
  m.heads = 1
  m.dropout = 0.2
  m.loss = "ce"                    # ce | sampled | bce
  m.negatives = 256                # loss='sampled'
  if variant == "tiny":
    m.d, m.blocks = 16, 1
  return m


def train_config(variant: str = "default") -> ml_collections.ConfigDict:
  t = _tiger().train_config("default")
  t.batch_size = 256
  t.lr = 1e-3
  t.weight_decay = 0.0
  t.warmup_frac = 0.0
  t.schedule = "constant"
  t.clip = 0.0                     # the official code does not clip
  t.epochs = 200
  t.eval_every = 2
  t.patience = 5
  t.log_every = 50
  del t["beam"], t["tau"]          # the T5's decoding and loss settings
  if variant == "default":
    t.epochs = 60
  if variant == "scientific":
    t.patience = 15                # as the generative rows it is compared with (tiger.py)
  if variant == "tiny":
    t.batch_size = 64
    t.lr = 1e-2                    # learns visibly in its 57 steps (1e-3 stays near chance)
    t.epochs = 3
    t.eval_every = 1
    t.eval_batch_size = 64
    t.log_every = 5
    t.save_every = 10
  return t


def cf_config(variant: str = "default", d: int = 32) -> ml_collections.ConfigDict:
  """`config.cf` of the generative methods: the SASRec that derives a missing `cf` feature.
  d: the tokenizer's code width (32: LETTER's official embeddings, which its L_cf compares
  with the 32-d codes); configs/etegrec.py sets 256 (ETEGRec's official SASRec)."""
  c = ml_collections.ConfigDict()
  c.cache_dir = ""                 # "" -> $JAXREC_CACHE_DIR or ~/.cache/jaxrec
  c.model = model_config(variant)
  c.model.d = d
  c.train = train_config(variant)
  if variant == "tiny":
    c.train.epochs = 2
  return c


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  variant = variant or "default"
  if variant not in ("default", "tiny", "instruments", "scientific"):
    raise ValueError(f"unknown sasrec variant {variant!r}")
  tiger = _tiger().get_config(variant)
  cfg = ml_collections.ConfigDict()
  cfg.method = "sasrec"
  cfg.variant = variant
  cfg.seed = 0
  cfg.data = tiger.data
  cfg.data.features = ()           # interactions only
  cfg.data.index = False
  cfg.model = model_config(variant)
  cfg.model.item_input = "id"      # id | codes | id+codes (not in `cf` SASRec's model)
  cfg.model.codes = ""             # item_input with codes: a workdir holding codes.npz
  cfg.train = train_config(variant)
  return cfg
