"""A run end to end: setup (data, the features it lacks, the method's model: code table,
recommender, prefix tables), the method's plan, the training loop, results.

Everything a run produces lands in its workdir: config.json, metrics.jsonl, codes.npz
(+ codes.json, <name>.index.json, code_usage.png), checkpoints/, results.json, ranks.npz
(each user's target rank in the best checkpoint's valid and test lists), report.png.
The collaborative feature `cf`, when a method needs it and the data set lacks it, is the
item table of a SASRec trained by a run of this same pipeline in a cache folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import time

import jax
import ml_collections
import numpy as np

from jaxrec import distributed
from jaxrec.answer import Answerer
from jaxrec.cache import Claim, check, clean_temporaries, move_aside, read_sidecar, seal
from jaxrec.checkpoint import write_atomic
from jaxrec.config import (cache_root, config_from_json, config_to_json, validate_config,
                           without_added_defaults, without_neutral)
from jaxrec.data import BatchIterator, Dataset, align, bucket_lengths, leave_one_out, load_dataset
from jaxrec.data.dataset import validate_features
from jaxrec.errors import CheckpointError, ConfigError, ConfigMismatchError
from jaxrec.fingerprint import fingerprint
from jaxrec.methods import Method, get_method
from jaxrec.recommender import hf
from jaxrec.report import write_report
from jaxrec.text.embedding import text_embeddings
from jaxrec.training.checkpointing import restore_best
from jaxrec.training.evaluation import (evaluate_split, fmt, most_popular, popularity_baseline,
                                        recommend, recommend_histories, target_ranks)
from jaxrec.training.loop import Loop
from jaxrec.training.plan import Plan
from jaxrec.training.run import Run, make_mesh, set_codes
from jaxrec.xla import compile_listener, compile_summary

__all__ = ["setup", "train_and_evaluate", "load_run", "recommend", "restore_best", "make_mesh",
           "ensure_features", "item_keys", "user_keys", "recommender"]

DERIVED = {"cf": "the item table of a SASRec trained on the interactions (config.cf)",
           "text": "the item text embedded by `python -m jaxrec.embed --model PATH` (config.embed)"}


# ------------------------------------------------------------------------- the workdir
def check_config(cfg, workdir):
  """Refuses (ConfigMismatchError) a workdir whose config.json is another config's."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    new = json.loads(config_to_json(cfg))
    old, new = (without_neutral(without_added_defaults(c)) for c in (old, new))
    if old != new:
      diff = sorted(_diff_keys(old, new))
      raise ConfigMismatchError(
          f"{path}: this workdir holds a run with a different config (differs in "
          f"{', '.join(diff[:8])}); use another --workdir or the same config to resume")


def _write_config(cfg, workdir, ds: Dataset):
  """config.json, written once setup has validated the config and the data, so that a
  run that fails before can be corrected on the same workdir; items.json, the data set's
  key of each item id (its ids as strings when it has no keys)."""
  if not distributed.is_primary():
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    write_atomic(path, config_to_json(cfg))
  keys = os.path.join(workdir, "items.json")
  if not os.path.exists(keys):
    write_atomic(keys, json.dumps(item_keys(ds)))


def item_keys(ds: Dataset) -> list:
  """The data set's key of each item id (ASIN, RecBole token, LETTER id), as strings."""
  return [str(k) for k in ds.item_keys] if ds.item_keys is not None else [
      str(i) for i in range(ds.n_items)]


def user_keys(ds: Dataset) -> list:
  """The data set's key of each user row, as strings (the row itself when it has none)."""
  return [str(u) for u in ds.user_keys] if ds.user_keys is not None else [
      str(u) for u in range(ds.n_users)]


def _diff_keys(a, b, prefix=""):
  if isinstance(a, dict) and isinstance(b, dict):
    for k in set(a) | set(b):
      yield from _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
  elif a != b:
    yield prefix[:-1]


# ------------------------------------------------------------------------- setup
def setup(cfg, workdir: str, log=print) -> Run:
  """Loads data (deriving the features the method needs), then the method's model: for
  methods over semantic IDs the code table (built or reused), the recommender and the
  decoder tables."""
  method = get_method(cfg.method)
  validate_config(cfg, method.kind, method.heads, method.models)
  check_config(cfg, workdir)
  mesh = make_mesh()
  n_dev = mesh.devices.size
  for name in ("batch_size", "eval_batch_size"):
    if cfg.train[name] % n_dev:
      hint = " (on CPU --cpu_devices sets how many)" if jax.default_backend() == "cpu" else ""
      raise ConfigError(f"train.{name}={cfg.train[name]} must be divisible by the {n_dev} "
                        f"devices{hint}")
  ds = ensure_features(cfg, load_dataset(cfg.data), method, log)
  run = Run(cfg, workdir, ds, leave_one_out(ds, cfg.data.max_len),
            bucket_lengths(cfg.data.buckets, cfg.data.max_len, cfg.data.get("shapes", "auto"),
                           jax.default_backend()), mesh)
  method.setup_model(run, log)
  _write_config(cfg, workdir, ds)
  return run


def ensure_features(cfg, ds: Dataset, method: Method, log=print) -> Dataset:
  """`ds` with every feature the method reads present, deriving `cf` and `text`, and a
  joined feature "a+b" (`joined_views`) from its parts."""
  for name in method.features(cfg):
    parts = name.split("+")
    for part in parts:
      ds = _ensure_feature(cfg, ds, part, log)
    if len(parts) > 1 and name not in ds.features:
      ds = dataclasses.replace(ds, features={
          **ds.features, name: joined_views([ds.features[p] for p in parts])})
  return ds


def joined_views(views: list) -> np.ndarray:
  """Several item features as one ("text+cf": an RQ-VAE on the information SimCIT's views
  hold, its equal-information control): each row of each view scaled to unit L2 norm (so
  that no view outweighs another by its scale), then concatenated: float32 [N, sum of D]."""
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  return np.concatenate([unit(np.asarray(v, np.float32)) for v in views], axis=1)


def _ensure_feature(cfg, ds: Dataset, name: str, log) -> Dataset:
  if name in ds.features:
    return ds
  if name not in DERIVED:
    have = ", ".join(sorted(ds.features)) or "none"
    raise ConfigError(
        f"item feature {name!r} is needed (tokenizer.feature or a method's feature) but "
        f"data set {ds.name!r} has features: {have}. Load <data.dir>/{ds.name}.{name}.npy by "
        f"adding {name!r} to data.features, or use 'cf' ({DERIVED['cf']}), 'text' "
        f"({DERIVED['text']}) or several joined, 'text+cf'")
  derive = cf_embeddings if name == "cf" else text_embeddings
  return dataclasses.replace(ds, features={**ds.features, name: derive(cfg, ds, log)})


def sasrec_run_config(cfg) -> ml_collections.ConfigDict:
  """The config of the SASRec run that derives `cf` for `cfg`'s data set."""
  s = ml_collections.ConfigDict()
  s.method = "sasrec"
  s.variant = "cf"
  s.seed = cfg.seed
  s.data = ml_collections.ConfigDict(cfg.data.to_dict())
  s.data.features = ()
  s.data.index = False
  if "align" in s.data:
    s.data.align.tasks = ()        # SASRec has no prompts
  s.model = ml_collections.ConfigDict(cfg.cf.model.to_dict())
  s.train = ml_collections.ConfigDict(cfg.cf.train.to_dict())
  return s


def cf_embeddings(cfg, ds: Dataset, log=print) -> np.ndarray:
  """Trains (or reuses) the SASRec of `cfg.cf` on `ds`'s interactions: float32 [N, d]. The
  SASRec run is a full run of this pipeline (checkpoints, resume, early stopping,
  results.json) in a cache folder named by a fingerprint of the interactions and the SASRec
  settings, so a second method on the same data reuses it. Its exported table is sealed
  (`cf.json`: size and checksum); a damaged table is exported again from the run's best
  checkpoint, a run that cannot resume is moved aside and trained again. Process 0 holds
  the entry's claim (a second run needing it waits, then reuses it)."""
  scfg = sasrec_run_config(cfg)
  settings = without_added_defaults({k: scfg[k].to_dict() for k in ("model", "train")})
  fp = fingerprint(ds.offsets_U1, ds.items_I, ds.n_items, settings, scfg.seed,
                   scfg.data.max_len, list(scfg.data.buckets))
  workdir = os.path.join(cache_root(cfg), f"sasrec-{ds.name}-{fp[:16]}")
  path = os.path.join(workdir, f"{ds.name}.sasrec{scfg.model.d}.npy")
  primary = distributed.is_primary()
  with Claim(workdir + ".lock", log) if primary else contextlib.nullcontext():
    train = _prepare_cf(scfg, workdir, path, log) if primary else False
    distributed.barrier("cf decided")          # the others read process 0's decision
    if not primary:
      train = check(path, os.path.join(workdir, "cf.json"), legacy=_legacy_cf(workdir)) is not None
    if train:
      _train_cf(scfg, workdir, log if primary else (lambda m: None))
      if primary:
        seal(path, os.path.join(workdir, "cf.json"), {"sasrec_run": workdir})
  distributed.barrier("cf features")
  return validate_features(path, "cf", np.load(path), ds.n_items)


def _legacy_cf(workdir: str):
  """An entry written before cf.json: whole when the run finished and the table loads."""
  def problem(path):
    if not os.path.exists(os.path.join(workdir, "results.json")):
      return "the run has no results.json"
    try:
      np.load(path, mmap_mode="r")
    except Exception as e:                   # noqa: BLE001 - any failure is the damage
      return f"unreadable ({type(e).__name__})"
    return None
  return problem


def _prepare_cf(scfg, workdir: str, path: str, log) -> bool:
  """Whether the `cf` run must (re)train or re-export; logs what was found and removes a
  damaged table (it is exported again from the best checkpoint)."""
  sidecar = os.path.join(workdir, "cf.json")
  problem = check(path, sidecar, legacy=_legacy_cf(workdir))
  if problem is None and os.path.exists(os.path.join(workdir, "results.json")):
    with open(os.path.join(workdir, "results.json")) as f:
      valid = json.load(f)["valid"]
    log(f"cf: reusing {path} (SASRec valid R@10 {valid['recall@10']:.4f}, "
        f"N@10 {valid['ndcg@10']:.4f})")
    if "sha256" not in (read_sidecar(sidecar) or {}):
      seal(path, sidecar, {"sasrec_run": workdir})       # an older entry: checked from now on
    return False
  if not os.path.exists(workdir):
    log(f"cf: item feature 'cf' is not in the data set; training SASRec (d {scfg.model.d}) "
        f"on its interactions in {workdir}")
  else:
    if os.path.exists(path):
      os.remove(path)
    log(f"cf: {path}: {problem or 'no results.json'}; resuming the SASRec run in {workdir} "
        "(a finished run exports its table again)")
  for left in clean_temporaries(path):
    log(f"cf: removed {left}, left by a killed writer")
  return True


def _train_cf(scfg, workdir: str, log) -> None:
  """The `cf` run, resumed where it stopped; one that cannot resume (its checkpoints are
  damaged or gone) is moved aside and trained again."""
  sub_log = lambda m: log(f"[cf sasrec] {m}")
  try:
    train_and_evaluate(scfg, workdir, log=sub_log)
  except (CheckpointError, ConfigMismatchError) as e:
    if distributed.is_primary():
      why = str(e).splitlines()[0].split("; ")[0]     # (not the remedy a user's own run gets)
      log(f"cf: the SASRec run in {workdir} cannot be resumed ({why}): "
          f"moved aside to {move_aside(workdir)}; training it again")
    distributed.barrier("cf moved aside")
    train_and_evaluate(scfg, workdir, log=sub_log)


def load_run(workdir: str, log=lambda m: None):
  """A trained run's setup and its best checkpoint's parameters (its code table
  installed): (Run, params, the checkpoint's step). A CheckpointError names the workdir
  when there is none."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise CheckpointError(f"{path}: not found (is {workdir} a jaxrec.train workdir?)")
  with open(path) as f:
    cfg = config_from_json(f.read())
  run = setup(cfg, workdir, log=log)
  restored = restore_best(run)
  if restored is None:
    best = os.path.join(workdir, "checkpoints", "best")
    saved = os.path.isdir(best) and any(n.isdigit() for n in os.listdir(best))
    raise CheckpointError(f"{best}: " + (
        "every checkpoint is damaged (see the warnings above); train again in a new workdir: "
        "python -m jaxrec.train --workdir NEW_DIR" if saved else
        f"no usable checkpoint (train first: python -m jaxrec.train --workdir {workdir})"))
  if "codes" in restored[1]:             # the IDs the checkpoint was trained with
    set_codes(run, restored[1]["codes"])
  return run, restored[1]["params"], restored[0]


# ------------------------------------------------------------------------- the run
def recommender(workdir: str, k: int, exclude_history: bool, batch_size: int) -> Answerer:
  """A run's best checkpoint answering requests in the data set's keys."""
  run, params, _ = load_run(workdir)
  ds = run.dataset
  beam = run.cfg.train.beam if run.codes is not None else ds.n_items
  if k > beam:
    raise ConfigError(f"k={k}: the run's beam (train.beam={beam}) returns at most {beam} "
                      "items per user")
  popular, counts = most_popular(run)
  return Answerer(lambda h, u, n: recommend_histories(run, params, h, u, n, batch_size),
                  item_keys(ds), user_keys(ds), popular, counts, k, beam, exclude_history)


def align_sampler(run: Run, log=print):
  """`data.align`'s alignment rows of each training batch (jaxrec/data/align.py), or None."""
  cfg = run.cfg
  a = cfg.data.get("align")
  if a is None or not a.tasks:
    return None
  folder = hf.model_folder(cfg.model.path)
  texts = align.titles(run.dataset, tuple(a.fields))
  arrays = align.item_arrays(texts, hf.tokenizer(folder), hf.eos_id(folder), tuple(a.tasks),
                             a.max_tokens)
  n_items = run.dataset.n_items
  n = align.per_batch(a.per_batch, cfg.train.batch_size, n_items, len(run.splits["train"]),
                      run.mesh.devices.size)
  log(f"align: {', '.join(a.tasks)}, {n} items per batch of {cfg.train.batch_size}")
  return align.Sampler(arrays, tuple(a.tasks), n_items, n, cfg.seed, run.rows(n))


def train_and_evaluate(cfg, workdir: str, log=print) -> dict:
  """The whole run; resumes from workdir's latest intact checkpoint when there is one."""
  t_start = time.time()
  primary = distributed.is_primary()
  log = log if primary else (lambda m: None)   # logs and files from process 0 only
  run = setup(cfg, workdir, log)
  loop = resumed_loop(run, log)
  compiled = []
  with compile_listener(compiled.append):
    best = loop.train()
    return _finish(run, loop.plan, best, loop, t_start, log, compiled)


def resumed_loop(run: Run, log=print) -> Loop:
  """The run's training loop (its batches and the method's plan), resumed from the
  workdir's latest intact checkpoint when there is one."""
  cfg, tc = run.cfg, run.cfg.train
  root = jax.random.key(cfg.seed)
  k_init, k_train = jax.random.fold_in(root, 1), jax.random.fold_in(root, 2)
  train_it = BatchIterator(run.dataset, run.splits["train"], tc.batch_size, run.buckets,
                           shuffle=True, seed=cfg.seed, iid=cfg.data.batching == "iid",
                           rows=run.rows(tc.batch_size), extra=align_sampler(run, log),
                           group=tc.accumulate if cfg.data.get("whole_updates", False) else 1)
  plan = get_method(cfg.method).training_plan(run, k_init, len(train_it))
  loop = Loop(run, plan, train_it, k_train, log)
  loop.resume()
  log(f"{cfg.method}: {run.dataset.n_items} items, {len(run.splits['train'])} train samples, "
      f"{len(train_it)} steps/epoch, {plan.n_params:,} parameters"
      f"{'' if plan.n_trained is None else f' ({plan.n_trained:,} trained)'}, {run.mesh.devices.size} "
      f"device(s) [{jax.devices()[0].platform}], buckets {run.buckets}")
  return loop


def _finish(run: Run, plan: Plan, best_tree, loop: Loop, t_start, log, compiled: list) -> dict:
  """Test metrics of the checkpoint best on validation (of the last stage), results.json
  and report.png. `compiled`: the programs compiled so far in this invocation (the test
  split's are added as they come)."""
  cfg, ls = run.cfg, loop.ls
  tokenizer_stats = run.table.stats if run.table is not None else None
  extra = plan.finish(run, best_tree) if plan.finish else {}
  more_ranks = extra.pop("ranks", {})
  best_params = distributed.replicate(best_tree["params"], run.replicated)
  # each user's target rank, both splits (ranks.npz): the validation split decoded once more
  # for it (seconds; its metrics are those recorded when the checkpoint was chosen)
  ranks, hooks = zip(*(target_ranks(run.dataset.n_users) for _ in range(2)))
  valid = evaluate_split(run, best_params, "valid", on_batch=hooks[0])
  results = {
      "method": cfg.method, "variant": cfg.get("variant", ""), "dataset": run.dataset.name,
      "best": ls.best,
      "valid": _best_valid(ls) or valid,
      "test": evaluate_split(run, best_params, "test", on_batch=hooks[1]),
      "popularity": popularity_baseline(run),
      "tokenizer": tokenizer_stats,
      "train_seconds": round(ls.train_seconds, 1),
      "train_samples_per_s": round(ls.train_samples / max(ls.train_seconds, 1e-9), 1),
      "steps": loop.step,
      "parameters": plan.n_params,
      **({} if plan.n_trained is None else {"parameters_trained": plan.n_trained}),
      "device": f"{jax.devices()[0].device_kind} x{run.mesh.devices.size}",
      "wall_seconds_this_invocation": round(time.time() - t_start, 1),
      **extra,
  }
  results["programs_this_invocation"] = compile_summary(compiled)   # the test split's included
  if distributed.is_primary():
    write_atomic(os.path.join(run.workdir, "results.json"), json.dumps(results, indent=2))
    if not distributed.multi_process():   # (each process holds its own users' ranks)
      buf = io.BytesIO()
      np.savez_compressed(buf, valid=ranks[0], test=ranks[1], **more_ranks)
      write_atomic(os.path.join(run.workdir, "ranks.npz"), buf.getvalue())
    log("test " + fmt(results["test"]))
    log("most-popular test " + fmt(results["popularity"]["test"]))
    write_report(run.workdir, run.table)
  distributed.barrier("results written")
  return results


def _best_valid(ls):
  """The validation metrics recorded when the best checkpoint was evaluated (decoding
  the same parameters again would give the same numbers)."""
  for r in ls.evals:
    if ls.best and r["step"] == ls.best["step"] and "ndcg@10" in r:   # (not a loss-only record)
      return {k: v for k, v in r.items() if k not in ("step", "epoch", "split", "stage")}
  return None
