"""What a method is: the `Method` every method module declares (one instance, registered by
name), with the shared core as its defaults: the RQ-VAE code table (plus the method's
tokenizer terms), the T5 over its codes, and one AdamW stage on the code loss.

A method declares what it is instead of being named elsewhere:
  kind    "codes": items are semantic IDs decoded by a model over codes (a code table,
          prefix tables, beam search); "items": a model over item ids (SASRec)
  heads   the T5 output heads its losses are written for ("vocab": LETTER-TIGER's one
          softmax over the whole vocabulary)
  models  the recommenders (`config.model.kind`, `recommender.family`) its losses are
          written for: the shared plan runs any; ETEGRec's and SIIT's read the T5's encoder
and overrides any of `required_features`, `tokenizer_loss`, `build_code_table`,
`setup_model`, `training_plan`. A new method is a module that subclasses `Method` and calls
`register`; nothing else changes (tests/test_layers.py plugs one in).
"""
from __future__ import annotations

import functools
import importlib
import json
import time

import jax
import numpy as np

from jaxrec import distributed
from jaxrec.data import gather_batch
from jaxrec.errors import ConfigError
from jaxrec.recommender import family
from jaxrec.tokenizer import build
from jaxrec.training.plan import Plan, single_stage_plan
from jaxrec.training.run import Run, install_codes
from jaxrec.xla import Program

BUILTIN = ("tiger", "letter", "etegrec", "sasrec", "simcit", "siit")
_REGISTRY: dict = {}


class Method:
  """The shared core; subclasses change what their method changes."""
  name: str = ""
  kind: str = "codes"                 # "codes" | "items"
  heads: tuple = ("level",)           # T5 output heads the method supports
  models: tuple = family.KINDS        # recommenders (model.kind) the method supports

  def required_features(self, cfg) -> tuple:
    """Item features the method reads besides its tokenizer's input."""
    del cfg
    return ()

  def features(self, cfg) -> tuple:
    """Every item feature a run reads: the tokenizer's input and the method's own."""
    if self.kind == "items":
      return ()
    names = [cfg.tokenizer.feature] if cfg.tokenizer.source in build.FITTED else []
    return tuple(dict.fromkeys(names + list(self.required_features(cfg))))

  def tokenizer_loss(self, cfg, dataset):
    """A `tokenizer.train.Extra` of terms added to the RQ-VAE's loss, or None."""
    del cfg, dataset
    return None

  def build_code_table(self, cfg, dataset, key, workdir=None, log=print, n_devices: int = 1):
    """(CodeTable, tokenizer (model, params) or None): the shared RQ-VAE / given / random
    table, with the method's tokenizer terms."""
    del n_devices
    return build.build_code_table(cfg.tokenizer, dataset, key, cfg.seed, workdir=workdir,
                                  extra=self.tokenizer_loss(cfg, dataset), log=log)

  def setup_model(self, run: Run, log=print) -> None:
    """Code table (trained or reused), the T5 over its codes, its prefix tables and its
    evaluation steps."""
    setup_generative(run, self, log)

  def eval_fn(self, run: Run, width: int):
    """The evaluation step ranking `width` items per user (`jaxrec.evaluate --beam`): the
    run's decoding with a beam of that width."""
    return decoding_eval_fn(run, run.cfg.train.decode == "constrained", width)

  def training_plan(self, run: Run, key, steps_per_epoch: int) -> Plan:
    """The recommender's code loss (cross-entropy on logits / train.tau), one AdamW stage."""
    step = lambda tx: functools.partial(run.steps.train_step, model=run.model, tx=tx,
                                        tau=run.cfg.train.tau)
    return single_stage_plan(run, init_t5(run, key), step, steps_per_epoch)


def register(method: Method) -> Method:
  """Makes `method` known by its name (`config.method`)."""
  if not method.name or method.kind not in ("codes", "items"):
    raise ValueError(f"a method needs a name and kind 'codes' or 'items', got "
                     f"{method.name!r}, {method.kind!r}")
  _REGISTRY[method.name] = method
  return method


def get_method(name: str) -> Method:
  """The registered method `name` (built-in modules register themselves on import)."""
  if name not in _REGISTRY and name in BUILTIN:
    importlib.import_module(f"jaxrec.methods.{name}")
  if name not in _REGISTRY:              # (a config error: the command prints one line)
    raise ConfigError(f"unknown method {name!r} (config.method); available: "
                      f"{', '.join(sorted(set(BUILTIN) | set(_REGISTRY)))}")
  return _REGISTRY[name]


def code_table(cfg, dataset, method: Method, workdir=None, log=print, n_devices: int = 1):
  """The run's code table and tokenizer, from the method's `build_code_table`."""
  key = jax.random.fold_in(jax.random.key(cfg.seed), 0)
  return method.build_code_table(cfg, dataset, key, workdir=workdir, log=log,
                                 n_devices=n_devices)


def setup_generative(run: Run, method: Method, log) -> None:
  """Code table (trained or reused; process 0 fits it, the others read its table), the
  recommender over its codes (`config.model.kind`), prefix tables, the decoding step."""
  cfg, ds, workdir = run.cfg, run.dataset, run.workdir
  t0 = time.time()
  primary = distributed.is_primary()
  if not primary:
    distributed.barrier("code table")
  table, tokenizer = code_table(cfg, ds, method, workdir,
                                lambda r: log(f"tokenizer {json.dumps(r)}"), run.mesh.devices.size)
  if primary:
    if build.saved_table(workdir, table.fingerprint, log=lambda r: log(r["message"])) is None:
      build.write_outputs(table, workdir, ds, f"{cfg.method} on {ds.name}")
      log(f"code table {table.codes_NxC.shape} in {time.time() - t0:.1f}s: "
          f"{json.dumps(table.stats['final'])}")
    build.remove_fit_checkpoints(workdir)  # (also when a kill came between codes.npz and this)
    distributed.barrier("code table")
  run.tokenizer = tokenizer
  run.model, run.steps = family.build(cfg.model, table.sizes, cfg.train.dtype)
  install_codes(run, table)
  run.eval_fn = decoding_eval_fn(run, constrained=cfg.train.decode == "constrained")
  run.loss_fn = Program("valid_loss", jax.jit(functools.partial(run.steps.loss_sums,
                                                                model=run.model)))
  run.recommend_fn = functools.partial(run.steps.recommend_step, model=run.model,
                                       beam=cfg.train.beam,
                                       constrained=cfg.train.decode == "constrained")


def decoding_eval_fn(run: Run, constrained: bool, beam: int = 0):
  """The recommender's evaluation step on the run's mesh: beam search of `beam` (0:
  train.beam), constrained to the catalogue or over the whole code space."""
  return distributed.per_device_eval(functools.partial(
      run.steps.eval_step, model=run.model, beam=beam or run.cfg.train.beam,
      constrained=constrained), run.mesh)


def init_t5(run: Run, key):
  """The run's recommender parameters, initialised on two training samples' shapes."""
  batch = gather_batch(run.dataset, run.splits["train"], run.buckets[0],
                       np.arange(2) % max(len(run.splits["train"]), 1))
  return run.steps.init_params(run.model, run.codes, batch, key)
