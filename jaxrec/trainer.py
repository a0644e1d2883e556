"""Train and evaluate a generative recommender: tokenizer stage, training loop with
evaluation, early stopping and checkpoints, final test metrics of the best checkpoint.

The loop runs a method's `Plan`: a state (any pytree) and one or more `Stage`s, each a
schedule of jitted steps over the same batches with its own early stopping (TIGER and
LETTER: one stage, one step; ETEGRec: alternating tokenizer / recommender epochs that
re-code the items on device, then fine-tuning from the best checkpoint). A method module
provides `training_plan(run, key, steps_per_epoch)`; without one, `default_plan`.

Everything a run produces lands in its workdir: config.json, metrics.jsonl, codes.npz
(+ codes.json, <name>.index.json, code_usage.png), checkpoints/, results.json, report.png.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from jaxrec import decode, distributed, metrics
from jaxrec.checkpoint import CheckpointError, Checkpoints, read_jsonl, write_atomic
from jaxrec.config import (ConfigError, config_to_json, validate_config,
                           without_added_defaults, without_neutral)
from jaxrec.data import (BatchIterator, Dataset, bucket_lengths, eval_batches, gather_batch,
                         leave_one_out, load_dataset)
from jaxrec.features import ensure_features
from jaxrec.methods import build_code_table, get_method
from jaxrec.optim import TrainState, optimizer_and_schedule
from jaxrec.recommender import steps
from jaxrec.recommender.t5 import T5, model_config
from jaxrec.tokenizer.build import remove_fit_checkpoints, write_outputs
from jaxrec.tokenizer.codes import CodeTable, health_dict
from jaxrec.xla import compiler_options, jit_init


class ConfigMismatchError(ValueError):
  pass


@dataclasses.dataclass
class Run:
  """Everything set up for a run, shared by training and `jaxrec.evaluate`. Generative
  methods hold a code table, the T5 and its prefix tables; a model over item ids (SASRec)
  holds neither (table, codes and tables are None)."""
  cfg: object
  workdir: str
  dataset: Dataset
  splits: dict
  buckets: tuple
  mesh: Mesh
  model: Any = None
  eval_fn: Any = None       # jitted: (params, batch, *code_args) -> (metric sums, items)
  loss_fn: Any = None       # jitted: (params, batch, *code_args) -> (loss sum, samples); for
                            # train.select='loss' (None: the model has no such loss)
  table: Optional[CodeTable] = None
  codes: Optional[jax.Array] = None         # [N, C] on device, replicated
  tables: Optional[decode.PrefixTables] = None
  tokenizer: Any = None     # (RQVAE, params) of a trained tokenizer, None for given codes

  @property
  def batch_sharding(self):
    return NamedSharding(self.mesh, P("data"))

  @property
  def replicated(self):
    return NamedSharding(self.mesh, P())

  @property
  def code_args(self) -> tuple:
    """What the steps read besides params and batch: the current code table and its prefix
    tables (generative methods), nothing for models over item ids."""
    return () if self.codes is None else (self.codes, self.tables)

  def rows(self, batch_size: int) -> slice:
    """This process's rows of every batch of `batch_size` (all of them with one process)."""
    return distributed.process_rows(self.batch_sharding, batch_size)

  def shard(self, batch):
    """A batch (this process's rows of it) as global arrays sharded over the mesh."""
    n = len(batch["weight_B"]) * jax.process_count()
    return distributed.global_batch(batch, self.batch_sharding, n)


def _check_config(cfg, workdir):
  path = os.path.join(workdir, "config.json")
  text = config_to_json(cfg)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    new = json.loads(text)
    old, new = (without_neutral(without_added_defaults(c)) for c in (old, new))
    if old != new:
      diff = sorted(_diff_keys(old, new))
      raise ConfigMismatchError(
          f"{path}: this workdir holds a run with a different config (differs in "
          f"{', '.join(diff[:8])}); use another --workdir or the same config to resume")


def _write_config(cfg, workdir):
  """config.json, written once setup has validated the config and the data, so that a
  run that fails before can be corrected on the same workdir."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path) and distributed.is_primary():
    os.makedirs(workdir, exist_ok=True)
    write_atomic(path, config_to_json(cfg))


def _diff_keys(a, b, prefix=""):
  if isinstance(a, dict) and isinstance(b, dict):
    for k in set(a) | set(b):
      yield from _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
  elif a != b:
    yield prefix[:-1]


def make_mesh() -> Mesh:
  """A 1-D data-parallel mesh over every device of every process (CPU, GPUs or TPU cores)."""
  return Mesh(distributed.mesh_devices(), ("data",))


def setup(cfg, workdir: str, log=print) -> Run:
  """Loads data (deriving the features the method needs), then the method's model: for
  generative methods the code table (built or reused), the T5 and the decoder tables."""
  validate_config(cfg)
  _check_config(cfg, workdir)
  mesh = make_mesh()
  n_dev = mesh.devices.size
  for name in ("batch_size", "eval_batch_size"):
    if cfg.train[name] % n_dev:
      hint = " (on CPU --cpu_devices sets how many)" if jax.default_backend() == "cpu" else ""
      raise ConfigError(f"train.{name}={cfg.train[name]} must be divisible by the {n_dev} "
                        f"devices{hint}")
  method = get_method(cfg.method)
  ds = ensure_features(cfg, load_dataset(cfg.data), method, log)
  run = Run(cfg, workdir, ds, leave_one_out(ds, cfg.data.max_len),
            bucket_lengths(cfg.data.buckets, cfg.data.max_len), mesh)
  if hasattr(method, "setup_model"):
    method.setup_model(run)
  else:
    _setup_generative(run, method, log)
  _write_config(cfg, workdir)
  return run


def _setup_generative(run: Run, method, log) -> None:
  """Code table (trained or reused), T5 over its codes, prefix tables, the decoding step."""
  cfg, ds, workdir = run.cfg, run.dataset, run.workdir
  t0 = time.time()
  primary = distributed.is_primary()
  if not primary:                  # process 0 fits the tokenizer; the others read its table
    distributed.barrier("code table")
  table, tokenizer = build_code_table(cfg, ds, method, workdir,
                                      lambda r: log(f"tokenizer {json.dumps(r)}"),
                                      run.mesh.devices.size)
  if primary:
    if (not os.path.exists(os.path.join(workdir, "codes.npz"))
        or CodeTable.load(workdir).fingerprint != table.fingerprint):  # left by a failed setup
      write_outputs(table, workdir, ds, f"{cfg.method} on {ds.name}")
      log(f"code table {table.codes_NxC.shape} in {time.time() - t0:.1f}s: "
          f"{json.dumps(table.stats['final'])}")
    remove_fit_checkpoints(workdir)  # (also when a kill came between codes.npz and this)
    distributed.barrier("code table")
  run.table, run.tokenizer = table, tokenizer
  run.model = T5(model_config(cfg.model, table.sizes, cfg.train.dtype))
  run.codes = distributed.replicate(jnp.asarray(table.codes_NxC), run.replicated)
  run.tables = distributed.replicate(
      decode.prefix_tables(table.codes_NxC, cfg.tokenizer.shared_ids), run.replicated)
  run.eval_fn = distributed.per_device_eval(functools.partial(
      steps.eval_step, model=run.model, beam=cfg.train.beam,
      constrained=cfg.train.decode == "constrained"), run.mesh)
  run.loss_fn = jax.jit(functools.partial(steps.loss_sums, model=run.model))


def init_params(run: Run, key):
  batch = gather_batch(run.dataset, run.splits["train"], run.buckets[0],
                       np.arange(2) % max(len(run.splits["train"]), 1))
  cfg = run.model.cfg
  tok, mask = steps.history_tokens(run.codes, batch["history_BxL"], batch["mask_BxL"], cfg)
  dec_in, _ = steps.decoder_io(run.codes, batch["target_B"], cfg)
  return jit_init(run.model, {"params": key}, tok, mask, batch["user_B"], dec_in, train=False)


def evaluate_split(run: Run, params, split_name: str) -> dict:
  """Constrained decoding over a split: metrics over the full catalogue, plus timing."""
  t0 = time.time()
  total = None
  bs = run.cfg.train.eval_batch_size
  for batch in eval_batches(run.dataset, run.splits[split_name], bs, run.buckets, run.rows(bs)):
    sums, _ = run.eval_fn(params, run.shard(batch), *run.code_args)
    total = metrics.accumulate(total, sums)
  out = metrics.finalize(total)
  out["decode_s"] = round(time.time() - t0, 2)
  out["users"] = int(total["count"])
  return out


def valid_loss(run: Run, params) -> float:
  """The teacher-forced code loss on the validation split (mean over users; no dropout):
  what train.select='loss' selects by (LETTER's official trainer)."""
  total, count = 0.0, 0.0
  bs = run.cfg.train.eval_batch_size
  for batch in eval_batches(run.dataset, run.splits["valid"], bs, run.buckets, run.rows(bs)):
    s, c = run.loss_fn(params, run.shard(batch), *run.code_args)
    total, count = total + float(s), count + float(c)
  return total / max(count, 1.0)


def recommend(run: Run, params, users, k: int = 10):
  """Next-item recommendations after each user's whole sequence (its last data.max_len
  items), by beam search of width train.beam (train.decode): (items [U, k], log-probability
  scores [U, k], the items' IDs [U, k, C]); -1 where the beam found fewer than k items."""
  if run.codes is None:
    raise ValueError(f"recommend() decodes semantic IDs; {run.cfg.method} ranks item ids "
                     "(jaxrec.recommender.sasrec.scores gives its scores)")
  users = np.atleast_1d(np.asarray(users))
  ds, max_len = run.dataset, run.cfg.data.max_len
  seqs = [ds.items_I[ds.offsets_U1[u]:ds.offsets_U1[u + 1]][-max_len:] for u in users]
  length = next(b for b in run.buckets if b >= max(len(s) for s in seqs))
  hist = np.zeros((len(users), length), np.int32)
  mask = np.zeros((len(users), length), bool)
  for i, s in enumerate(seqs):
    hist[i, :len(s)], mask[i, :len(s)] = s, True
  tokens, tok_mask = steps.history_tokens(run.codes, jnp.asarray(hist), jnp.asarray(mask),
                                          run.model.cfg)
  items, scores = decode.generate(params, tokens, tok_mask, jnp.asarray(users, jnp.int32),
                                  run.tables, model=run.model, beam=run.cfg.train.beam,
                                  constrained=run.cfg.train.decode == "constrained")
  items, scores = np.asarray(items)[:, :k], np.asarray(scores)[:, :k]
  ids = np.where(items[..., None] >= 0, np.asarray(run.codes)[np.maximum(items, 0)], -1)
  return items, scores, ids


def popularity_baseline(run: Run) -> dict:
  """Most-popular items of the training interactions (all but each user's last two),
  ranked identically for every user, on the same splits."""
  ds = run.dataset
  keep = np.ones(ds.n_interactions, bool)
  ends = ds.offsets_U1[1:]
  keep[ends - 1] = False
  keep[ends - 2] = False
  counts = np.bincount(ds.items_I[keep], minlength=ds.n_items)
  top = np.argsort(-counts, kind="stable")[:max(metrics.KS)]
  out = {}
  for name in ("valid", "test"):
    targets = ds.items_I[run.splits[name].end_S]
    out[name] = metrics.rank_metrics_np(np.tile(top, (len(targets), 1)), targets)
  return out


def _truncate_jsonl(path, max_step):
  """Drops log lines written after the checkpoint a run resumes from (and a last line
  torn by a kill mid-write)."""
  if not os.path.exists(path):
    return
  write_atomic(path, "".join(json.dumps(r) + "\n" for r in read_jsonl(path)
                             if r.get("step", 0) <= max_step))


@dataclasses.dataclass
class Stage:
  """A run of epochs with its own early stopping. `step(epoch)` gives the jitted step for an
  epoch of the stage (counted from the stage's start): `(state, batch, codes, key) ->
  (state, out)`; `begin(state, best, run)` (every stage but the first) starts the stage from
  the previous stage's best checkpoint and returns (state, codes or None); `after_epoch(state,
  epoch, run)` may return a new code table [N, C] on device and a dict to log."""
  name: str
  epochs: int
  step: Callable[[int], Callable]
  eval_every: int
  patience: int
  begin: Optional[Callable] = None
  after_epoch: Optional[Callable] = None


@dataclasses.dataclass
class Plan:
  """What the training loop runs. TIGER and LETTER: one stage, one step (`default_plan`);
  ETEGRec: alternating tokenizer / recommender epochs, then fine-tuning; SASRec: one stage
  over item ids."""
  state: Any                              # pytree; donated to the steps
  stages: list
  rec_params: Callable                    # state -> the params that evaluate (run.eval_fn)
  best_extra: Callable                    # state -> pytree saved beside them in best/ ({} none)
  global_step: Callable                   # state -> int steps taken
  lr_at: Optional[Callable]               # (state, step) -> learning rate to log (None: the
                                          # steps return it as out["lr"])
  n_params: int
  dynamic_codes: bool = False             # the code table changes during training
  finish: Optional[Callable] = None       # (run, best tree) -> dict added to results.json,
                                          # after the best checkpoint is restored


def single_stage_plan(run: Run, params, make_step: Callable, steps_per_epoch: int,
                      finish: Optional[Callable] = None) -> Plan:
  """One stage, one jitted step: AdamW (train.* settings) over `params`;
  `make_step(tx)` is the step `(state, batch, codes, key) -> (state, out)`."""
  tc = run.cfg.train
  total_steps = tc.epochs * steps_per_epoch
  if tc.max_steps:
    total_steps = min(total_steps, tc.max_steps)
  warmup = int(tc.warmup_frac * total_steps)
  tx, lr_at = optimizer_and_schedule(tc.lr, tc.weight_decay, total_steps, warmup, tc.clip,
                                     tc.schedule, tc.accumulate, tc.decay, tc.lr_end)
  state = distributed.replicate(TrainState(jnp.zeros((), jnp.int32), params, tx.init(params)),
                                run.replicated)
  train_fn = jax.jit(make_step(tx), donate_argnums=0, out_shardings=run.replicated,
                     compiler_options=compiler_options("train"))
  stage = Stage("train", tc.epochs, lambda epoch: train_fn, tc.eval_every, tc.patience)
  return Plan(state, [stage], rec_params=lambda s: s.params, best_extra=lambda s: {},
              global_step=lambda s: int(s.step), lr_at=lambda s, step: float(lr_at(step)),
              n_params=sum(int(x.size) for x in jax.tree.leaves(params)), finish=finish)


def default_plan(run: Run, key, steps_per_epoch: int) -> Plan:
  """The T5's code loss (cross-entropy on logits / train.tau), one AdamW step."""
  step = lambda tx: functools.partial(steps.train_step, model=run.model, tx=tx, tau=run.cfg.train.tau)
  return single_stage_plan(run, init_params(run, key), step, steps_per_epoch)


def set_codes(run: Run, codes_NxC) -> None:
  """Makes `codes_NxC` (device, [N, C]) the run's code table: decoding tables rebuilt on device."""
  run.codes = distributed.replicate(codes_NxC.astype(jnp.int32), run.replicated)
  run.tables = distributed.replicate(decode.build_prefix_tables(run.codes), run.replicated)


def save_final_codes(run: Run, best) -> dict:
  """For plans whose code table changes (ETEGRec, SIIT): the best checkpoint's IDs become
  the run's, saved as codes_final.npz with their health; `Plan.finish` of those plans."""
  set_codes(run, best["codes"])
  codes = np.asarray(best["codes"])
  stats = {"final": health_dict(codes, run.table.sizes)}
  run.table = CodeTable(codes, run.table.sizes, stats, run.table.fingerprint + "-trained")
  if distributed.is_primary():
    run.table.save(run.workdir, "codes_final")
  return {"final_codes": stats["final"]}


def restore_best(run: Run):
  """The best checkpoint: (step, {"params", "codes"[, "extra"]} replicated over the run's
  mesh, meta) or None. The mesh may differ from the one that saved it (another device
  count, e.g. `--cpu_devices`)."""
  path = os.path.join(run.workdir, "checkpoints", "best")
  if not os.path.isdir(path):        # nothing to restore (and no empty folder left behind)
    return None
  best = Checkpoints(path, max_to_keep=1)
  try:
    restored = best.restore(None)
  finally:
    best.close()
  if restored is None:
    return None
  step, tree, meta = restored
  return step, distributed.replicate(tree, run.replicated), meta


def train_and_evaluate(cfg, workdir: str, log=print) -> dict:
  """The whole run; resumes from workdir's latest intact checkpoint when there is one."""
  t_start = time.time()
  primary = distributed.is_primary()
  log = log if primary else (lambda m: None)   # logs and files from process 0 only
  run = setup(cfg, workdir, log)
  tc = cfg.train
  root = jax.random.key(cfg.seed)
  k_init, k_train = jax.random.fold_in(root, 1), jax.random.fold_in(root, 2)
  train_it = BatchIterator(run.dataset, run.splits["train"], tc.batch_size, run.buckets,
                           shuffle=True, seed=cfg.seed, iid=cfg.data.batching == "iid",
                           rows=run.rows(tc.batch_size))
  steps_per_epoch = len(train_it)
  method = get_method(cfg.method)
  plan = getattr(method, "training_plan", default_plan)(run, k_init, steps_per_epoch)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  ckpt = Checkpoints(os.path.join(ckpt_dir, "train"), max_to_keep=2)
  best_ckpt = Checkpoints(os.path.join(ckpt_dir, "best"), max_to_keep=1)
  state, meta = _resume(run, plan, ckpt, best_ckpt, train_it, log)
  log(f"{cfg.method}: {run.dataset.n_items} items, {len(run.splits['train'])} train samples, "
      f"{steps_per_epoch} steps/epoch, {plan.n_params:,} parameters, {run.mesh.devices.size} "
      f"device(s) [{jax.devices()[0].platform}], buckets {run.buckets}")

  metrics_f = open(os.path.join(workdir, "metrics.jsonl"), "a") if primary else None

  def write(record):
    if metrics_f is not None:
      metrics_f.write(json.dumps(record) + "\n")
      metrics_f.flush()

  def save(step):
    _check_finite(state, plan.stages[meta["stage"]].name, step, "the training state")
    meta["iterator"] = train_it.get_state()
    ckpt.save(step, _ckpt_tree(run, state), meta)

  def save_best(step, epoch):
    tree = {"params": plan.rec_params(state)}
    if run.codes is not None:
      tree["codes"] = run.codes
    extra = plan.best_extra(state)
    if extra:
      tree["extra"] = extra
    _check_finite(tree, plan.stages[meta["stage"]].name, step, "the best parameters")
    best_ckpt.save(step, tree, {"epoch": epoch, "stage": meta["stage"]})

  by_loss = tc.select == "loss"
  step = plan.global_step(state)
  while not meta["done"]:
    stage = plan.stages[meta["stage"]]
    epoch = train_it.epoch
    stage_epoch = epoch - meta["stage_start"]
    out_of_steps = bool(tc.max_steps and step >= tc.max_steps)
    if stage_epoch >= stage.epochs or meta.get("stage_over") or out_of_steps:
      if meta["stage"] + 1 < len(plan.stages) and not out_of_steps:
        meta["stage"] += 1
        meta["stage_start"], meta["stage_over"] = epoch, False
        nxt = plan.stages[meta["stage"]]
        restored = best_ckpt.restore(None)
        state, codes = nxt.begin(state, restored[1] if restored else None, run)
        if codes is not None:
          set_codes(run, codes)
        meta["best"], meta["bad_evals"] = None, 0
        log(f"stage {nxt.name} begins at epoch {epoch} from the best checkpoint"
            f"{'' if restored else ' (none saved: from the current state)'}")
        save(step)
        continue
      meta["done"] = True
      break
    step_fn = stage.step(stage_epoch)
    t_epoch, samples, pending = time.time(), 0.0, None
    bar = tqdm(total=steps_per_epoch, initial=train_it.get_state()["grain"].get("next_index", 0),
               desc=f"epoch {epoch + 1} ({stage.name})", leave=False, mininterval=1.0,
               disable=None if primary else True)
    logger = functools.partial(_check_and_log, write=write, bar=bar, tc=tc, plan=plan,
                               stage=stage.name, epoch=epoch)
    for batch in train_it.epoch_batches():
      n_real = float(batch["weight_B"].sum()) * jax.process_count()  # (this process's rows)
      state, out = step_fn(state, run.shard(batch), run.codes, k_train)
      step += 1
      # Fetch the previous step's metrics only now, so the host never stalls the device.
      if pending is not None:
        logger(pending, state=state, samples=samples, t_epoch=t_epoch)
      pending = (step, out)
      samples += n_real
      meta["train_samples"] += n_real
      bar.update(1)
      if step % tc.save_every == 0:
        t_save = time.time()
        logger(pending, state=state, samples=samples, t_epoch=t_epoch)  # before the save: a
        pending = None                     # kill after it must not lose this step's record
        save(step)
        t_epoch += time.time() - t_save  # checkpoint time is not training time
      if tc.max_steps and step >= tc.max_steps:
        break
    if pending is not None:
      logger(pending, state=state, samples=samples, t_epoch=t_epoch, force=True)
    bar.close()
    meta["train_seconds"] += time.time() - t_epoch
    epoch_done = train_it.epoch > epoch  # False only when max_steps cut the epoch short
    if epoch_done and stage.after_epoch is not None:
      codes, record = stage.after_epoch(state, stage_epoch, run)
      if codes is not None:
        set_codes(run, codes)
      if record:
        record = {"step": step, "epoch": epoch + 1, "stage": stage.name, **record}
        write(record)
        log(f"epoch {epoch + 1} ({stage.name}): " + json.dumps(
            {k: v for k, v in record.items() if k not in ("step", "epoch", "stage")}))
    stage_epochs_done = train_it.epoch - meta["stage_start"]
    finished = (stage_epochs_done >= stage.epochs) or bool(tc.max_steps and step >= tc.max_steps)
    if (epoch_done and stage_epochs_done % stage.eval_every == 0) or finished:
      # the selection score: valid NDCG@10 (decoded), or minus the teacher-forced valid loss
      if by_loss:
        valid = {"valid_loss": valid_loss(run, plan.rec_params(state))}
      else:
        valid = evaluate_split(run, plan.rec_params(state), "valid")
      record = {"step": step, "epoch": train_it.epoch if epoch_done else epoch + 1,
                "split": "valid", "stage": stage.name, **valid}
      write(record)
      meta["evals"].append(record)
      log(f"epoch {record['epoch']} step {step} ({stage.name}): valid " + (
          f"loss {valid['valid_loss']:.5f}" if by_loss else _fmt(valid)))
      best = meta["best"]
      if best is None or (valid["valid_loss"] < best["valid_loss"] if by_loss
                          else valid["ndcg@10"] > best["ndcg@10"]):
        meta["best"] = {"step": step, "epoch": record["epoch"], "stage": stage.name,
                        **{k: valid[k] for k in ("valid_loss" if by_loss else "ndcg@10",)}}
        meta["bad_evals"] = 0
        save_best(step, record["epoch"])
      else:
        meta["bad_evals"] += 1
        if meta["bad_evals"] >= stage.patience:
          log(f"early stop ({stage.name}): no validation "
              f"{'loss decrease' if by_loss else 'NDCG@10 gain'} in {stage.patience} evaluations")
          meta["stage_over"] = True
    save(step)
  if metrics_f is not None:
    metrics_f.close()
  ckpt.close()
  restored = best_ckpt.restore(None)
  best_ckpt.close()
  if restored is None:
    raise CheckpointError(f"{best_ckpt.directory}: no usable best checkpoint (every one is "
                          "damaged or missing): start over in a new --workdir")
  return _finish(run, plan, restored[1], meta, step, t_start, log)


def _ckpt_tree(run: Run, state):
  """What a resumable checkpoint holds: the plan's state and the current code table."""
  return {"train": state} if run.codes is None else {"train": state, "codes": run.codes}


def _resume(run: Run, plan: Plan, ckpt: Checkpoints, best_ckpt: Checkpoints, train_it, log):
  """(state, meta) from the newest intact checkpoint, or the plan's fresh state."""
  meta = {"evals": [], "best": None, "bad_evals": 0, "done": False, "train_seconds": 0.0,
          "train_samples": 0, "stage": 0, "stage_start": 0}
  for name in ckpt.partial:
    log(f"{ckpt.directory}/{name}: a save interrupted by the last run's end was removed")
  if not ckpt.steps():
    if ckpt.partial:
      log("no complete checkpoint is left: training starts from step 0")
    return plan.state, meta
  restored = ckpt.restore(_ckpt_tree(run, plan.state))
  if restored is None:
    raise CheckpointError(f"{ckpt.directory}: checkpoints exist but none could be restored; "
                          "move them away (or use a new --workdir) to start over")
  step0, tree, meta = restored
  if meta.get("best") is not None and not best_ckpt.steps():
    raise CheckpointError(
        f"{best_ckpt.directory}: the best checkpoint (step {meta['best']['step']}) this run "
        "recorded is missing, so its result could not be reported; restore the folder or "
        "start over in a new --workdir")
  meta.setdefault("stage", 0)        # checkpoints written before training plans had stages
  meta.setdefault("stage_start", 0)
  if plan.dynamic_codes:
    set_codes(run, tree["codes"])
  elif run.codes is not None and not np.array_equal(np.asarray(tree["codes"]),
                                                     run.table.codes_NxC):
    raise CheckpointError(f"{run.workdir}: the checkpoint's code table differs from codes.npz "
                          "(was codes.npz replaced?): restore it or start over in a new --workdir")
  train_it.set_state(meta["iterator"])
  log(f"resumed from {ckpt.directory}/{step0} (epoch {train_it.epoch}, step {step0}, "
      f"stage {plan.stages[meta['stage']].name})")
  if distributed.is_primary():
    _truncate_jsonl(os.path.join(run.workdir, "metrics.jsonl"), step0)
  return distributed.replicate(tree["train"], run.replicated), meta


def _finish(run: Run, plan: Plan, best_tree, meta, step, t_start, log) -> dict:
  """Test metrics of the checkpoint best on validation (of the last stage), results.json
  and report.png."""
  cfg = run.cfg
  tokenizer_stats = run.table.stats if run.table is not None else None
  extra = plan.finish(run, best_tree) if plan.finish else {}
  best_params = distributed.replicate(best_tree["params"], run.replicated)
  results = {
      "method": cfg.method, "variant": cfg.get("variant", ""), "dataset": run.dataset.name,
      "best": meta["best"],
      "valid": _best_valid(meta) or evaluate_split(run, best_params, "valid"),
      "test": evaluate_split(run, best_params, "test"),
      "popularity": popularity_baseline(run),
      "tokenizer": tokenizer_stats,
      "train_seconds": round(meta["train_seconds"], 1),
      "train_samples_per_s": round(meta["train_samples"] / max(meta["train_seconds"], 1e-9), 1),
      "steps": step,
      "parameters": plan.n_params,
      "device": f"{jax.devices()[0].device_kind} x{run.mesh.devices.size}",
      "wall_seconds_this_invocation": round(time.time() - t_start, 1),
      **extra,
  }
  if distributed.is_primary():
    write_atomic(os.path.join(run.workdir, "results.json"), json.dumps(results, indent=2))
    log("test " + _fmt(results["test"]))
    log("most-popular test " + _fmt(results["popularity"]["test"]))
    from jaxrec.report import write_report
    write_report(run.workdir, run.table)
  distributed.barrier("results written")
  return results


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _check_finite(tree, stage: str, step: int, what: str) -> None:
  """Refuses to save a state with NaN / Inf: the newest checkpoint stays the last finite one."""
  if not bool(_all_finite(tree)):
    raise FloatingPointError(
        f"{what} is not finite at step {step} (stage {stage}): not saved; lower train.lr or "
        "check the data (the newest checkpoint on disk is the last finite state)")


def _best_valid(meta):
  """The validation metrics recorded when the best checkpoint was evaluated (decoding
  the same parameters again would give the same numbers)."""
  best = meta.get("best")
  for r in meta.get("evals", []):
    if best and r["step"] == best["step"] and "ndcg@10" in r:   # (not a loss-only record)
      return {k: v for k, v in r.items() if k not in ("step", "epoch", "split", "stage")}
  return None


def _fmt(m):
  return ", ".join(f"{k} {m[k]:.4f}" for k in ("recall@5", "recall@10", "ndcg@5", "ndcg@10"))


def _check_and_log(pending, *, write, bar, tc, plan, stage, epoch, state, samples, t_epoch,
                   force=False):
  step, out = pending
  loss = float(out["loss"])
  if not np.isfinite(loss):
    raise FloatingPointError(
        f"training loss is {loss} at step {step} (stage {stage}, epoch {epoch + 1}): lower "
        "train.lr or check the data; no state after the last finite loss was saved")
  rate = samples / max(time.time() - t_epoch, 1e-9)
  bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{rate:.0f}", refresh=False)
  if step % tc.log_every == 0 or force:
    record = {"step": step, "epoch": epoch + 1,
              **{k: round(float(v), 6) for k, v in out.items() if k != "lr"},
              "lr": float(out["lr"]) if "lr" in out else plan.lr_at(state, step - 1),
              "samples_per_s": round(rate, 1)}
    for k in ("id_accuracy", "grad_norm"):
      if k in record:
        record[k] = round(record[k], 4)
    write(record)
