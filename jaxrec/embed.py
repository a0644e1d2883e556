"""`python -m jaxrec.embed --config configs/X.py[:variant] --model PATH`: item text -> the
`text` item feature, with the Flax sentence encoder of `jaxrec/text/bert.py`.

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

import json
import os
import time

import numpy as np

from jaxrec.checkpoint import write_atomic
from jaxrec.data.dataset import DataError

# Padded lengths (one compiled shape each): steps of 8 up to 64, 16 up to 256, 32 beyond.
# Items are sorted by length within a chunk, so a batch pads to its longest text rounded up
# to the next bucket. Padded tokens over the 3,541 Scientific items (batch 64) against
# sentence-transformers' pad-to-batch-maximum: titles 107,008 vs 89,956 (steps of 32:
# 131,072), full text 560,128 vs 531,328 (steps of 32: 581,632); 8 and 17 shapes compiled.
# Powers of two padded 148-token descriptions to 256 and made the encoder 0.83x
# sentence-transformers' speed on them (bench/README.md).
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
    import jax
    from jaxrec.text import bert
    from jaxrec.xla import compiler_options
    self.cfg = bert.read_config(folder)
    self.tokenizer = bert.load_tokenizer(folder, self.cfg.max_seq_length)
    self.params = bert.load_params(folder, self.cfg)
    self.model = bert.SentenceEncoder(self.cfg)
    self.batch_size = batch_size
    self.buckets = buckets_for(self.cfg.max_seq_length)
    # Without YNN fusions (as decoding, jaxrec/xla.py): 1.55x faster on the 2-core dev CPU
    # for a 64 x 256-token batch of all-MiniLM-L6-v2 (12.2 vs 19.0 s, measured under load).
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
  """Embeds `ds`'s item text with the model in `folder`; writes <out_dir>/<name>.text.npy
  (+ .json) atomically and returns its path."""
  from tqdm import tqdm
  from jaxrec.tokenizer.codes import fingerprint
  from jaxrec.text.bert import fingerprint_files
  texts = item_texts(ds, cfg.embed.fields)
  enc = Encoder(folder, cfg.embed.batch_size)
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"{ds.name}.text.npy")
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
          "model_fingerprint": fingerprint(fingerprint_files(folder)),
          "fields": list(cfg.embed.fields), "text_fingerprint": fingerprint(texts),
          "items": len(texts), "dim": enc.dim, "max_seq_length": enc.cfg.max_seq_length,
          "seconds": round(seconds, 2), "items_per_s": round(len(texts) / max(seconds, 1e-9), 1)}
  os.replace(tmp, path)
  write_atomic(path[:-4] + ".json", json.dumps(meta, indent=2))
  log(f"embedded {len(texts)} items with {folder} in {seconds:.1f}s "
      f"({meta['items_per_s']:.0f} items/s): {path}")
  return path


def main(argv):
  del argv
  from jaxrec.data import load_dataset
  from jaxrec.features import text_dir
  cfg = _CONFIG.value
  ds = load_dataset(cfg.data)
  embed_dataset(cfg, ds, _MODEL.value, _OUT.value or text_dir(cfg))


if __name__ == "__main__":
  from absl import flags
  from ml_collections import config_flags
  from jaxrec import cli
  from jaxrec.config import default_config_path
  _CONFIG = config_flags.DEFINE_config_file("config", default_config_path(), "Config file[:variant].")
  _MODEL = flags.DEFINE_string("model", None, "A local sentence-transformers folder.", required=True)
  _OUT = flags.DEFINE_string("out", "", "Output folder (default: embed.out_dir, else the cache).")
  cli.run(main)
