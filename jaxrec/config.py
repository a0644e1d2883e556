"""Config helpers shared by the command-line entry points."""
from __future__ import annotations

import json
import os

import ml_collections

from jaxrec.errors import ConfigError



_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_config_path() -> str:
  """configs/tiger.py of this checkout: what `python -m jaxrec.train` runs with no flags."""
  return os.path.join(_REPO_ROOT, "configs", "tiger.py")


# Keys that change when and how often a run logs or saves, never its results: a run may be
# resumed with other values of them.
RESULT_NEUTRAL = (("tokenizer", "save_every"), ("tokenizer", "log_every"),
                  ("train", "save_every"), ("train", "log_every"), ("train", "tensorboard"))
# SIIT's refinement settings, neutral in a run without refinement rounds (`siit.rounds=0`)
SIIT_REFINEMENT = ("refine_every", "first_refine", "beam", "usage_penalty", "capacity",
                   "keep_margin", "movers")


# Keys added after runs were recorded, with the value that does what those runs did: a saved
# config without the key reads as having it, and a key at that value is left out of config
# comparisons and fingerprints, so that those runs (and cached features) are still theirs.
_ADDED = {("train", "accumulate"): 1, ("train", "decode"): "constrained",
          ("tokenizer", "shared_ids"): False, ("train", "select"): "ndcg@10",
          ("data", "batching"): "buckets", ("train", "lr_end"): 0.0, ("train", "decay"): "all",
          ("model", "logit_scale"): True, ("model", "init_std"): 0.0, ("model", "head"): "level",
          ("model", "extra_vocab"): 0, ("tokenizer", "simcit", "prefix_loss"): False,
          ("train", "dtype"): "float32", ("tokenizer", "keep"): "last",
          ("train", "tensorboard"): True, ("etegrec", "rec_schedule"): "stage",
          ("data", "shapes"): "auto", ("model", "kind"): "t5", ("train", "shard_params"): False,
          ("data", "align"): {"tasks": [], "fields": ["title"], "max_tokens": 32, "per_batch": 0},
          ("etegrec", "warmup_frac"): 0.0, ("tokenizer", "simcit", "holdout"): 0.0,
          ("etegrec", "alternation"): "alternate", ("siit", "first_refine"): 0,
          ("tokenizer", "simcit", "w_recon"): 0.0,
          ("siit", "align_loss"): "sum", ("siit", "movers"): "any",
          ("tokenizer", "simcit", "groups"): 0,
          ("tokenizer", "simcit", "init"): "flax", ("data", "whole_updates"): False,
          ("tokenizer", "init"): "flax", ("model", "item_input"): "id", ("model", "codes"): "",
          ("model", "item_tokens"): "codes", ("etegrec", "short_rows"): 0.0,
          ("tokenizer", "kmeans_sample"): "catalogue", ("tokenizer", "last_batch"): "wrap"}
# A `train` key is a key of the collaborative pre-training's `cf.train` too (same TrainConfig).
ADDED_KEYS = {**_ADDED, **{("cf",) + path: value for path, value in _ADDED.items()
                           if path[0] == "train"}}


def _edit_added(d: dict, edit) -> dict:
  out = dict(d)
  for path, value in ADDED_KEYS.items():
    node = out
    for sec in path[:-1]:
      if not isinstance(node.get(sec), dict):
        break
      node[sec] = dict(node[sec])
      node = node[sec]
    else:
      edit(node, path[-1], value)
  return out


def with_added_keys(d: dict) -> dict:
  """A saved config dict completed with ADDED_KEYS' values where it lacks them (not the
  `model` ones: T5Config's defaults are those values, and SASRec's model has no such keys)."""
  model_keys = {path[-1] for path in ADDED_KEYS if path[0] == "model"}

  def fill(node, key, value):
    if key not in model_keys:
      node.setdefault(key, value)
  return _edit_added(d, fill)


def without_added_defaults(d: dict) -> dict:
  """A config dict without the ADDED_KEYS that hold their value (what older runs did)."""
  return _edit_added(d, lambda node, key, value: node.pop(key) if node.get(key, value) == value
                     and key in node else None)


def without_neutral(d: dict) -> dict:
  """A config dict without the RESULT_NEUTRAL keys, nor SIIT's refinement settings when it
  has no rounds (what must match to resume a run)."""
  out = dict(d)
  for sec, key in RESULT_NEUTRAL:
    if isinstance(out.get(sec), dict):
      out[sec] = {k: v for k, v in out[sec].items() if k != key}
  if isinstance(out.get("siit"), dict) and out["siit"].get("rounds") == 0:
    out["siit"] = {k: v for k, v in out["siit"].items() if k not in SIIT_REFINEMENT}
  return out


def tokenizer_fingerprint_dict(tok_cfg) -> dict:
  """The tokenizer config as its IDs' fingerprint sees it: without `save_every` (the
  checkpoint cadence). `log_every` stays in, so that the IDs of runs made before tokenizer
  checkpoints existed keep their fingerprints (nor the ADDED_KEYS at their old value)."""
  d = without_added_defaults({"tokenizer": tok_cfg.to_dict()})["tokenizer"]
  return {k: v for k, v in d.items() if k != "save_every"}


def config_to_json(cfg: ml_collections.ConfigDict) -> str:
  return json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=str)


def config_from_json(text: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(with_added_keys(json.loads(text)))


def load_config_module(path: str):
  """Imports a config file by path (configs build on each other this way: letter.py on
  tiger.py, without configs/ being a package)."""
  import importlib.util
  name = "_jaxrec_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(method: str = "tiger", variant: str = "default") -> ml_collections.ConfigDict:
  """The config `configs/<method>.py:<variant>` of this checkout (for notebooks and scripts;
  the command line takes `--config configs/<method>.py:<variant>`)."""
  path = os.path.join(_REPO_ROOT, "configs", f"{method}.py")
  if not os.path.exists(path):
    methods = sorted(f[:-3] for f in os.listdir(os.path.dirname(path)) if f.endswith(".py"))
    raise FileNotFoundError(f"{path}: no such config (methods: {methods})")
  return load_config_module(path).get_config(variant)


# --------------------------------------------------------------------- validation
# (section, key) -> (check, what it must be). Keys absent from a config are skipped: every
# method's config has the sections it uses.
def _int_at_least(lo):
  return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo,
          f"an integer >= {lo}")


def _number_above(lo, hi=None, closed_hi=False):
  def ok(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > lo:
      return False
    return hi is None or (v <= hi if closed_hi else v < hi)
  return ok, f"a number > {lo}" + (f" and {'<=' if closed_hi else '<'} {hi}" if hi else "")


def _number_in(lo, hi):
  return (lambda v: not isinstance(v, bool) and isinstance(v, (int, float)) and lo <= v < hi,
          f"a number in [{lo}, {hi})")


def _one_of(*options):
  return (lambda v: v in options, "one of " + ", ".join(repr(o) for o in options))


DOMAINS = {
    ("data", "max_len"): _int_at_least(1),
    ("data", "min_len"): _int_at_least(3),
    ("data", "short_users"): _one_of("drop", "error"),
    ("data", "source"): _one_of("synthetic", "letter", "etegrec", "recbole"),
    ("tokenizer", "source"): _one_of("rqvae", "rqkmeans", "given", "random", "simcit"),
    ("tokenizer", "levels"): _int_at_least(1),
    ("tokenizer", "codebook_size"): _int_at_least(2),
    ("tokenizer", "code_dim"): _int_at_least(1),
    ("tokenizer", "epochs"): _int_at_least(0),
    ("tokenizer", "batch_size"): _int_at_least(1),
    ("tokenizer", "lr"): _number_above(0),
    ("tokenizer", "weight_decay"): _number_in(0, float("inf")),
    ("tokenizer", "dropout"): _number_in(0, 1),
    ("tokenizer", "beta"): _number_in(0, float("inf")),
    ("tokenizer", "gumbel_tau"): _number_above(0),
    ("tokenizer", "log_every"): _int_at_least(1),
    ("tokenizer", "reseed_every"): _int_at_least(0),
    ("tokenizer", "kmeans_iters"): _int_at_least(1),
    ("tokenizer", "schedule"): _one_of("constant", "cosine", "linear"),
    ("tokenizer", "level_reduce"): _one_of("mean", "sum"),
    ("tokenizer", "residual_grad"): _one_of("stop", "through"),
    ("tokenizer", "collision"): _one_of("suffix", "sinkhorn", "none"),
    ("tokenizer", "kmeans_method"): _one_of("kmeans++", "random", "constrained"),
    ("tokenizer", "kmeans_sample"): _one_of("catalogue", "first_batch"),
    ("tokenizer", "last_batch"): _one_of("wrap", "short"),
    ("tokenizer", "suffix_size"): _int_at_least(2),
    ("tokenizer", "keep"): _one_of("last", "lowest_collision"),
    ("tokenizer", "init"): _one_of("flax", "xavier"),
    ("model", "dropout"): _number_in(0, 1),
    ("model", "head"): _one_of("level", "vocab", "items"),
    ("model", "extra_vocab"): _int_at_least(0),
    ("model", "item_tokens"): _one_of("codes", "sum"),
    ("train", "batch_size"): _int_at_least(1),
    ("train", "accumulate"): _int_at_least(1),
    ("train", "eval_batch_size"): _int_at_least(1),
    ("train", "epochs"): _int_at_least(1),
    ("train", "lr"): _number_above(0),
    ("train", "weight_decay"): _number_in(0, float("inf")),
    ("train", "warmup_frac"): _number_in(0, 1),
    ("train", "schedule"): _one_of("constant", "cosine", "linear"),
    ("train", "decode"): _one_of("constrained", "free"),
    ("train", "select"): _one_of("ndcg@10", "loss"),
    ("data", "batching"): _one_of("buckets", "iid"),
    ("data", "shapes"): _one_of("auto", "buckets", "max_len"),
    ("train", "decay"): _one_of("all", "matrices"),
    ("train", "lr_end"): _number_in(0, 1),
    ("train", "dtype"): _one_of("float32", "bfloat16"),
    ("train", "clip"): _number_in(0, float("inf")),
    ("train", "eval_every"): _int_at_least(1),
    ("train", "patience"): _int_at_least(0),
    ("train", "beam"): _int_at_least(1),
    ("train", "tau"): _number_above(0),
    ("train", "log_every"): _int_at_least(1),
    ("train", "save_every"): _int_at_least(1),
    ("train", "max_steps"): _int_at_least(0),
}
SELECTION_K = 10          # checkpoints are selected by valid NDCG@10


def config_problems(cfg: ml_collections.ConfigDict, kind: str = "codes",
                    heads: tuple = ("level", "vocab"), models: tuple = ("t5", "decoder")
                    ) -> list[str]:
  """Every out-of-domain value of `cfg`, one line each (empty when valid), for a method of
  `kind` ("codes": semantic IDs, "items": a model over item ids) whose recommender has the
  output `heads` and may be any of `models` (`model.kind`; the method declares all three,
  `methods.base.Method`)."""
  problems = []
  for (section, key), (ok, want) in DOMAINS.items():
    node = cfg.get(section)
    if node is None or key not in node:
      continue
    value = node[key]
    if not ok(value):
      problems.append(f"{section}.{key}={value!r}: must be {want}")
  t = cfg.get("tokenizer")
  if t is not None and "modes" in t and "levels" in t and isinstance(t.levels, int):
    modes = tuple(t.modes)
    if t.source == "rqvae" and len(modes) != t.levels:
      problems.append(f"tokenizer.modes has {len(modes)} entries for tokenizer.levels="
                      f"{t.levels}: give one mode per level")
    bad = [m for m in modes if m not in ("hard", "gumbel", "sinkhorn")]
    if bad:
      problems.append(f"tokenizer.modes={modes!r}: {bad[0]!r} is not one of 'hard', "
                      "'gumbel', 'sinkhorn'")
  tr = cfg.get("train")
  generative = kind == "codes"
  if (generative and tr is not None and isinstance(tr.get("beam"), int)
      and 1 <= tr.beam < SELECTION_K):
    problems.append(f"train.beam={tr.beam}: the beam must be >= {SELECTION_K} (checkpoints are "
                    f"selected by NDCG@{SELECTION_K}, and a beam of {tr.beam} returns only "
                    f"{tr.beam} items per user)")
  if not generative and tr is not None and tr.get("dtype", "float32") != "float32":
    problems.append(f"train.dtype={tr.dtype!r}: {cfg.method} computes in float32 only "
                    "(the T5 of the generative methods has the bfloat16 option)")
  m = cfg.get("model")
  head = m.get("head", "level") if m is not None else "level"
  if head in ("vocab", "items") and head not in heads:
    what = ("LETTER-TIGER's protocol" if head == "vocab" else
            "one softmax over the catalogue, an analysis head")
    problems.append(f"model.head={head!r}: {cfg.method} has no such head ({what}; its losses "
                    "are written on per-level logits)")
  if head == "items" and tr is not None and tr.get("decode") == "free":
    problems.append("model.head='items' ranks the catalogue's items: it decodes no IDs, so "
                    "train.decode='free' does not apply")
  if m is not None and m.get("item_tokens") == "sum" and head == "vocab":
    problems.append("model.item_tokens='sum' reads no EOS token: use it with model.head='level'")
  if generative and m is not None:
    problems += _model_problems(cfg.method, m, models)
  if not generative and tr is not None and tr.get("select") == "loss":
    problems.append(f"train.select='loss': {cfg.method} has no teacher-forced code loss to "
                    "select by; use train.select='ndcg@10'")
  problems += _align_problems(cfg)
  return problems


ALIGN_TASKS = ("item2index", "index2item")     # jaxrec/data/align.py


def _align_problems(cfg) -> list[str]:
  """data.align: known tasks, on an LLM recommender (its tokenizer writes the prompts)."""
  a = cfg.get("data", {}).get("align")
  if a is None or not a.get("tasks"):
    return []
  problems = [f"data.align.tasks: {t!r} is not one of {', '.join(ALIGN_TASKS)}"
              for t in a.tasks if t not in ALIGN_TASKS]
  m = cfg.get("model")
  if m is None or m.get("kind") != "decoder" or not m.get("path"):
    problems.append("data.align.tasks: the alignment tasks are prompts for a pretrained LLM "
                    "recommender (model.kind='decoder' with a model.path); this run's model "
                    "has no tokenizer")
  if not a.get("fields"):
    problems.append("data.align.fields: give the item text fields of the prompts (e.g. title)")
  if not isinstance(a.get("max_tokens"), int) or a.max_tokens < 1:
    problems.append(f"data.align.max_tokens={a.get('max_tokens')!r}: must be an integer >= 1")
  if not isinstance(a.get("per_batch"), int) or a.per_batch < 0:
    problems.append(f"data.align.per_batch={a.get('per_batch')!r}: must be an integer >= 0 "
                    "(0: every item once per epoch)")
  return problems


def _model_problems(method: str, m, models: tuple) -> list[str]:
  """The generative recommender's kind, and the decoder-only model's own keys."""
  kind = m.get("kind", "t5")
  if kind not in ("t5", "decoder"):
    return [f"model.kind={kind!r}: must be 't5' or 'decoder'"]
  if kind not in models:
    return [f"model.kind={kind!r}: {method} runs on {' or '.join(models)} only (its losses "
            "read the T5's encoder and decoder states)"]
  if kind != "decoder":
    return []
  if "path" in m:
    return _llm_problems(m)
  problems = []
  heads, kv = m.get("heads", 1), m.get("kv_heads", 0)
  if kv and (kv < 0 or heads % kv):
    problems.append(f"model.kv_heads={kv}: must divide model.heads={heads} (0: as many)")
  if m.get("head_dim", 2) % 2:
    problems.append(f"model.head_dim={m.head_dim}: rotary positions need an even width")
  if m.get("mlp") not in ("swiglu", "relu"):
    problems.append(f"model.mlp={m.get('mlp')!r}: must be 'swiglu' or 'relu'")
  if m.get("loss") not in ("target", "all"):
    problems.append(f"model.loss={m.get('loss')!r}: must be 'target' or 'all'")
  if m.get("head", "level") != "level":
    problems.append(f"model.head={m.head!r}: the decoder-only recommender has the 'level' "
                    "head only")
  return problems


def _llm_problems(m) -> list[str]:
  """A pretrained LLM recommender's settings (its architecture is the folder's)."""
  problems = []
  folder = os.path.expandvars(os.path.expanduser(m.path or ""))
  if not folder or not os.path.isfile(os.path.join(folder, "config.json")):
    problems.append(f"model.path={m.path!r}: not a Hugging Face model folder (config.json, "
                    "safetensors weights, tokenizer.json); set it to a local copy, nothing is "
                    "downloaded")
  if m.get("id_init") not in ("normal", "mean"):
    problems.append(f"model.id_init={m.get('id_init')!r}: must be 'normal' or 'mean'")
  if m.get("train_rows") not in ("all", "ids"):
    problems.append(f"model.train_rows={m.get('train_rows')!r}: must be 'all' or 'ids'")
  if not isinstance(m.get("lora_rank"), int) or m.lora_rank < 0:
    problems.append(f"model.lora_rank={m.get('lora_rank')!r}: must be an integer >= 0 (0: full "
                    "fine-tuning)")
  bad = [t for t in m.get("lora_targets", ()) if t not in ("q", "k", "v", "o", "gate", "up", "down")]
  if bad:
    problems.append(f"model.lora_targets: {bad[0]!r} is not one of q, k, v, o, gate, up, down")
  if m.get("loss") not in ("target", "lm"):
    problems.append(f"model.loss={m.get('loss')!r}: a prompted LLM has the 'target' loss (a "
                    "softmax per level over its ID tokens) or 'lm' (the ID tokens and EOS over "
                    "the whole vocabulary, LC-Rec's)")
  return problems


def validate_config(cfg: ml_collections.ConfigDict, kind: str = "codes",
                    heads: tuple = ("level", "vocab"), models: tuple = ("t5", "decoder")
                    ) -> None:
  """Raises one ConfigError listing every problem of `config_problems`."""
  problems = config_problems(cfg, kind, heads, models)
  if problems:
    raise ConfigError("invalid config:\n  " + "\n  ".join(problems) if len(problems) > 1
                      else problems[0])


def cache_root(cfg) -> str:
  """Where derived data (text embeddings, `cf` runs) is cached: cf.cache_dir, else
  $JAXREC_CACHE_DIR, else ~/.cache/jaxrec."""
  return os.path.expanduser(cfg.cf.cache_dir or os.environ.get("JAXREC_CACHE_DIR", "")
                            or "~/.cache/jaxrec")
