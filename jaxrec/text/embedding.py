"""Item text -> the `text` item feature, with the Flax sentence encoder of `text/bert.py`,
and the cache a run reads it from.

An item's text is its non-empty `embed.fields` values joined by "; " (nothing added, so
`embed.fields=("title",)` embeds exactly the title). Texts are tokenized and encoded in
chunks, sorted by length within a chunk and padded to a few length buckets (one compiled
shape each), so memory stays bounded however large the catalogue; rows are written into a
memory-mapped `<name>.text.npy` (float32 [N, E], row i = item i) beside `<name>.text.json`
(model, fields, fingerprints, time). A run with `tokenizer.feature="text"` reads it from
`embed.out_dir` (default: the cache, `$JAXREC_CACHE_DIR` or ~/.cache/jaxrec, `text/`), or
embeds in-run when `embed.model` is set.
"""
from __future__ import annotations

import os
import time

import jax
import numpy as np
from tqdm import tqdm

from jaxrec import distributed
from jaxrec.cache import Claim, check, clean_temporaries, move_aside, read_sidecar, seal
from jaxrec.config import cache_root
from jaxrec.data.dataset import Dataset, validate_features
from jaxrec.errors import ConfigError, DataError
from jaxrec.fingerprint import fingerprint
from jaxrec.text import bert
from jaxrec.xla import compiler_options

# Padded lengths (one compiled shape each): steps of 8 up to 64, 16 up to 256, 32 beyond.
# Items are sorted by length within a chunk, so a batch pads to its longest text rounded up
# to the next bucket: close to sentence-transformers' pad-to-batch-maximum with few shapes
# (powers of two padded long descriptions heavily: bench/README.md, item text encoder).
BUCKETS = (tuple(range(8, 65, 8)) + tuple(range(80, 257, 16)) + tuple(range(288, 513, 32)))


def item_texts(ds, fields) -> list[str]:
  """One text per item: its non-empty `fields` joined by "; "."""
  if ds.item_text is None:
    raise DataError(ds.name, None, "the data set has no item text (LETTER format: "
                    "<name>.item.json; RecBole: <name>.item columns), so 'text' cannot be embedded")
  texts = []
  for i, attrs in enumerate(ds.item_text):
    parts = [str(attrs[f]).strip() for f in fields if attrs and str(attrs.get(f, "")).strip()]
    if not parts:
      key = ds.item_keys[i] if ds.item_keys is not None else i
      raise DataError(ds.name, f"item {key!r}", f"has none of the text fields {list(fields)} "
                      f"(it has {sorted(attrs or {})}); set embed.fields to fields every item has")
    texts.append("; ".join(parts))
  return texts


def buckets_for(max_len: int) -> tuple[int, ...]:
  return tuple(sorted({min(b, max_len) for b in BUCKETS} | {max_len}))


class Encoder:
  """A loaded sentence-transformers folder: tokenizer, jitted encoder per length bucket."""

  def __init__(self, folder: str, batch_size: int = 64):
    self.cfg = bert.read_config(folder)
    self.tokenizer = bert.load_tokenizer(folder, self.cfg.max_seq_length)
    self.params = bert.load_params(folder, self.cfg)
    self.model = bert.SentenceEncoder(self.cfg)
    self.batch_size = batch_size
    self.buckets = buckets_for(self.cfg.max_seq_length)
    # compiled as decoding is (jaxrec/xla.py): faster for the encoder's batches on CPU
    self._fn = jax.jit(self.model.apply, compiler_options=compiler_options("decode"))
    self.dim = self.cfg.hidden

  def encode(self, texts, out=None, chunk: int = 0, progress=None):
    """Vectors [len(texts), E] (into `out` when given, e.g. a memmap), chunk by chunk."""
    out = np.zeros((len(texts), self.dim), np.float32) if out is None else out
    chunk = chunk or 64 * self.batch_size
    for start in range(0, len(texts), chunk):
      enc = self.tokenizer.encode_batch(list(texts[start:start + chunk]))
      ids = [e.ids for e in enc]
      order = np.argsort([len(x) for x in ids], kind="stable")
      for b in range(0, len(order), self.batch_size):
        rows = order[b:b + self.batch_size]
        longest = max(len(ids[r]) for r in rows)
        length = next(x for x in self.buckets if x >= longest)
        tok = np.zeros((self.batch_size, length), np.int32)
        mask = np.zeros((self.batch_size, length), bool)
        for j, r in enumerate(rows):
          tok[j, :len(ids[r])], mask[j, :len(ids[r])] = ids[r], True
        vec = np.asarray(self._fn(self.params, tok, mask))
        out[start + rows] = vec[:len(rows)]
        if progress is not None:
          progress(len(rows))
    return out


def embed_dataset(cfg, ds, folder: str, out_dir: str, log=print) -> str:
  """Embeds `ds`'s item text with the model in `folder`; writes <out_dir>/<name>.text.npy,
  then its sidecar <name>.text.json (with the file's size and checksum, `cache.seal`), and
  returns its path. The caller holds the entry's claim (`text_embeddings`, the command)."""
  texts = item_texts(ds, cfg.embed.fields)
  enc = Encoder(folder, cfg.embed.batch_size)
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"{ds.name}.text.npy")
  for left in clean_temporaries(path):
    log(f"text: removed {left}, left by a killed writer")
  tmp = path + ".tmp.npy"
  out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(texts), enc.dim))
  t0 = time.time()
  with tqdm(total=len(texts), desc=f"embed {ds.name}", unit="item", disable=None,
            mininterval=1.0) as bar:
    enc.encode(texts, out, progress=bar.update)
  seconds = time.time() - t0
  out.flush()
  del out
  meta = {"model": os.path.abspath(os.path.expanduser(folder)),
          "model_fingerprint": fingerprint(bert.fingerprint_files(folder)),
          "fields": list(cfg.embed.fields), "text_fingerprint": fingerprint(texts),
          "items": len(texts), "dim": enc.dim, "max_seq_length": enc.cfg.max_seq_length,
          "seconds": round(seconds, 2), "items_per_s": round(len(texts) / max(seconds, 1e-9), 1)}
  os.replace(tmp, path)
  seal(path, sidecar_of(path), meta)
  log(f"embedded {len(texts)} items with {folder} in {seconds:.1f}s "
      f"({meta['items_per_s']:.0f} items/s): {path}")
  return path


def text_dir(cfg) -> str:
  return os.path.expanduser(cfg.embed.out_dir) if cfg.embed.out_dir else os.path.join(
      cache_root(cfg), "text")


def sidecar_of(path: str) -> str:
  return path[:-4] + ".json"


def text_embeddings(cfg, ds: Dataset, log=print) -> np.ndarray:
  """The `text` feature of `ds`: embedded earlier by `jaxrec.embed` (checked against the
  data set's current text and the file's recorded checksum), or now with `embed.model`;
  a damaged file is embedded again (or, without a model, named with the command that
  rebuilds it). Process 0 builds it under the entry's claim; the others then read it."""
  path = os.path.join(text_dir(cfg), f"{ds.name}.text.npy")
  texts = item_texts(ds, cfg.embed.fields)
  if distributed.is_primary():
    with Claim(path + ".lock", log):
      _ensure_text(cfg, ds, path, texts, log)
  distributed.barrier("text features")
  return validate_features(path, "text", np.load(path), ds.n_items)


def _loads(path: str, n_items: int):
  """What is wrong with a text file whose sidecar records no checksum (older caches)."""
  try:
    rows = np.load(path, mmap_mode="r").shape[0]
  except Exception as e:                     # noqa: BLE001 - any failure is the damage
    return f"unreadable ({type(e).__name__}: {e})"
  return None if rows == n_items else f"{rows} rows for {n_items} items"


def _ensure_text(cfg, ds: Dataset, path: str, texts, log) -> None:
  model = cfg.embed.model
  problem = check(path, sidecar_of(path), legacy=lambda p: _loads(p, ds.n_items))
  command = ("`python -m jaxrec.embed --config <this config> --model PATH` with a local "
             "sentence-transformers folder, or set embed.model=PATH to embed in-run")
  if problem == "missing":
    if not model:
      raise ConfigError(f"item feature 'text' of data set {ds.name!r} is not embedded yet "
                        f"({path} not found): run {command}")
  elif problem:
    if not model:
      raise ConfigError(f"{path} is damaged ({problem}): rebuild it: {command}")
    log(f"text: {path} is damaged ({problem}): moved aside to {move_aside(path)}; "
        f"embedding again with {model}")
  else:
    meta = read_sidecar(sidecar_of(path))
    if meta.get("text_fingerprint") == fingerprint(texts) and (
        not model or os.path.abspath(os.path.expanduser(model)) == meta.get("model")):
      log(f"text: reusing {path} ({meta['model']}, fields {meta['fields']})")
      return
    if not model:
      raise ConfigError(f"{path}: embedded from other text than data set {ds.name!r} has now "
                        f"(fields {meta.get('fields')} vs embed.fields {list(cfg.embed.fields)}, "
                        "or the item file changed): run `python -m jaxrec.embed --config ... "
                        "--model PATH` again, or set embed.model=PATH to embed in-run")
  embed_dataset(cfg, ds, model, text_dir(cfg), log)
