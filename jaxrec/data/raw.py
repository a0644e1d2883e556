"""Streaming readers of raw interaction dumps for `jaxrec.data prepare`: Amazon reviews 2014
(one Python dict literal a line), 2018 and 2023 (JSON lines), plain or gzip (by magic
bytes), and CSV / Parquet logs in pyarrow batches. Memory holds the (user, item, time)
triples as int arrays (`Log`) and the key maps, never the raw text; a broken line is a
DataError naming the file and the line.
"""
from __future__ import annotations

import array
import ast
import gzip
import json
import os
import zlib
from typing import Iterator

import numpy as np

from jaxrec.errors import ConfigError, DataError

# format -> (user, item, time) fields of a review; (item, {output field: meta field}) of the meta
REVIEW_FIELDS = {
    "amazon2014": ("reviewerID", "asin", "unixReviewTime"),
    "amazon2018": ("reviewerID", "asin", "unixReviewTime"),
    "amazon2023": ("user_id", "parent_asin", "timestamp"),
}
META_FIELDS = {
    "amazon2014": ("asin", {"title": "title", "brand": "brand", "categories": "categories",
                            "description": "description"}),
    "amazon2018": ("asin", {"title": "title", "brand": "brand", "categories": "category",
                            "description": "description"}),
    "amazon2023": ("parent_asin", {"title": "title", "brand": "store",
                                   "categories": "categories", "description": "description"}),
}


# ----------------------------------------------------------------------------- reading lines

def _is_gzip(path) -> bool:
  with open(path, "rb") as f:
    return f.read(2) == b"\x1f\x8b"


def require(path):
  if not os.path.isfile(path):
    raise DataError(path, None, "file not found")


def iter_lines(path) -> Iterator[tuple[int, str]]:
  """(line number, text) of each non-blank line, plain or gzip, one line in memory at a time."""
  require(path)
  opener = gzip.open if _is_gzip(path) else open
  lineno = 0
  try:
    with opener(path, "rb") as f:
      for lineno, raw in enumerate(f, 1):
        try:
          text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          raise DataError(path, f"line {lineno}", f"not UTF-8 text (byte {e.start} of the "
                          "line)") from None
        if text.strip():
          yield lineno, text
  except (EOFError, OSError, zlib.error) as e:
    raise DataError(path, f"line {lineno + 1}", f"damaged or truncated gzip data "
                    f"({type(e).__name__}: {e})") from None


def _parse_loose(text):
  try:
    return ast.literal_eval(text.strip())
  except (ValueError, SyntaxError, MemoryError, RecursionError):
    return json.loads(text)


def iter_records(path, loose: bool) -> Iterator[tuple[int, dict]]:
  """(line number, dict) of a JSON-lines (or, `loose`, Python-literal-lines) file."""
  for lineno, text in iter_lines(path):
    try:
      obj = _parse_loose(text) if loose else json.loads(text)
    except json.JSONDecodeError as e:
      kind = "a Python dict literal or JSON" if loose else "JSON"
      raise DataError(path, f"line {lineno}", f"not {kind} ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
      raise DataError(path, f"line {lineno}", f"expected an object, got {type(obj).__name__}")
    yield lineno, obj


# ----------------------------------------------------------------------------- interactions

class Log:
  """(user, item, time) triples as compact arrays; raw keys mapped to ints as they come."""

  def __init__(self):
    self.user_ids: dict = {}
    self.item_ids: dict = {}
    self.users = array.array("i")
    self.items = array.array("i")
    self.times = array.array("d")

  def add(self, user: str, item: str, time: float):
    u = self.user_ids.setdefault(user, len(self.user_ids))
    i = self.item_ids.setdefault(item, len(self.item_ids))
    self.users.append(u)
    self.items.append(i)
    self.times.append(time)

  def add_batch(self, users, items, times):
    """Ids (of `user_ids` / `item_ids`) and times of many interactions at once."""
    self.users.frombytes(np.ascontiguousarray(users, np.int32).tobytes())
    self.items.frombytes(np.ascontiguousarray(items, np.int32).tobytes())
    self.times.frombytes(np.ascontiguousarray(times, np.float64).tobytes())

  def arrays(self):
    """Views of the collected (users, items, times): no copy (the log grows no more)."""
    return (np.frombuffer(self.users, np.int32), np.frombuffer(self.items, np.int32),
            np.frombuffer(self.times, np.float64))


def _key(path, record, field, value) -> str:
  if value is None or isinstance(value, (bool, dict, list)):
    raise DataError(path, record, f"field {field!r} is {value!r}, not an identifier")
  key = str(value).strip()
  if not key:
    raise DataError(path, record, f"field {field!r} is empty")
  return key


def _time(path, record, field, value) -> float:
  if isinstance(value, bool):
    value = None
  try:
    t = float(value)
  except (TypeError, ValueError):
    raise DataError(path, record, f"field {field!r} is {value!r}, not a number") from None
  if not np.isfinite(t):
    raise DataError(path, record, f"field {field!r} is {value!r}, not a finite number")
  return t


def read_amazon_reviews(path, fmt: str, log: Log):
  user_f, item_f, time_f = REVIEW_FIELDS[fmt]
  for lineno, obj in iter_records(path, loose=fmt == "amazon2014"):
    record = f"line {lineno}"
    for field in (user_f, item_f, time_f):
      if field not in obj:
        raise DataError(path, record, f"missing field {field!r} (a {fmt} review has "
                        f"{user_f}, {item_f}, {time_f})")
    log.add(_key(path, record, user_f, obj[user_f]), _key(path, record, item_f, obj[item_f]),
            _time(path, record, time_f, obj[time_f]))


def pyarrow_module():
  try:
    import pyarrow  # noqa: F401
    import pyarrow.compute  # noqa: F401
    import pyarrow.csv  # noqa: F401
    import pyarrow.parquet  # noqa: F401
  except ImportError:
    raise ConfigError('--format csv needs pyarrow: pip install -e ".[prepare]"') from None
  return pyarrow


def _is_parquet(path) -> bool:
  if path.lower().endswith((".parquet", ".pq", ".parquet.gz")):
    return True
  with open(path, "rb") as f:
    return f.read(4) == b"PAR1"


def iter_table(path, columns, optional=(), text_columns=()) -> Iterator[tuple[int, dict]]:
  """(first row number, {column: python list}) per batch of a CSV (plain or gzip) or Parquet
  file, with pyarrow's batched readers; row numbers count data rows from 1. The `columns`
  must exist; the `optional` ones are read where they do; a CSV's `text_columns` are read as
  text (ids stay "007", not 7), the others with pyarrow's type inference."""
  pa = pyarrow_module()
  for row, batch in iter_batches(path, columns, optional, text_columns):
    yield row, {name: _column(pa, batch.column(name)) for name in batch.schema.names}


def iter_batches(path, columns, optional=(), text_columns=(), batch_rows: int = 65536):
  """`iter_table`'s batches as pyarrow RecordBatches: (first row number, batch)."""
  require(path)
  pa = pyarrow_module()
  try:
    if _is_parquet(path):
      pf = pa.parquet.ParquetFile(path)
      have = pf.schema_arrow.names
      _check_columns(path, have, columns)
      wanted = list(columns) + [c for c in optional if c in have and c not in columns]
      batches = pf.iter_batches(columns=wanted, batch_size=batch_rows)
    else:
      stream = pa.input_stream(path, compression="gzip" if _is_gzip(path) else None)
      header = pa.csv.open_csv(stream, read_options=pa.csv.ReadOptions(block_size=1 << 16))
      have = header.schema.names
      stream.close()
      _check_columns(path, have, columns)
      wanted = list(columns) + [c for c in optional if c in have and c not in columns]
      stream = pa.input_stream(path, compression="gzip" if _is_gzip(path) else None)
      batches = pa.csv.open_csv(
          stream, read_options=pa.csv.ReadOptions(block_size=1 << 22),
          convert_options=pa.csv.ConvertOptions(
              include_columns=wanted,
              column_types={c: pa.string() for c in wanted if c in text_columns}))
    row = 1
    for batch in batches:
      yield row, batch
      row += batch.num_rows
  except pa.lib.ArrowException as e:
    text = str(e).strip().splitlines()
    raise DataError(path, None, f"unreadable ({text[0] if text else type(e).__name__})") from None


def _check_columns(path, have, columns):
  for c in columns:
    if c not in have:
      raise DataError(path, "header", f"no column {c!r} (columns: {', '.join(have)}); "
                      "name it with --user_col / --item_col / --time_col")


def _column(pa, col) -> list:
  """A column as Python values: timestamps as seconds, lists kept as lists."""
  if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
    unit = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}.get(getattr(col.type, "unit", "s"), 1)
    if pa.types.is_date(col.type):
      col, unit = col.cast(pa.date32()).cast(pa.int32()), 1 / 86400
    else:
      col = col.cast(pa.int64())
    return [None if v is None else v / unit for v in col.to_pylist()]
  return col.to_pylist()


def _times(pa, path, first, name, col) -> np.ndarray:
  """A batch's time column as float64 seconds (timestamps and dates converted, as
  `_column`), every value checked: the first missing or non-finite one is named."""
  num = lambda c: c.to_numpy(zero_copy_only=False).astype(np.float64)   # nulls -> NaN
  if pa.types.is_timestamp(col.type):
    unit = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}.get(col.type.unit, 1)
    values = num(col.cast(pa.int64())) / unit
  elif pa.types.is_date(col.type):
    values = num(col.cast(pa.date32()).cast(pa.int32())) * 86400.0
  elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
    values = num(col.cast(pa.float64()))
  else:                          # text: each value must parse as a number (the error names it)
    return np.array([_time(path, f"row {first + r}", name, v)
                     for r, v in enumerate(col.to_pylist())], np.float64)
  bad = np.flatnonzero(~np.isfinite(values))
  if len(bad):
    r = int(bad[0])
    _time(path, f"row {first + r}", name, col[r].as_py())       # raises, naming the value
  return values


def _keys(pa, path, first, name, col, ids: dict) -> np.ndarray:
  """A batch's key column as ids into `ids` (raw key -> id, extended as keys come): the
  batch's distinct keys are mapped once each (pyarrow's dictionary encoding), not row by row."""
  pc = pa.compute
  col = pc.utf8_trim_whitespace(col.cast(pa.string()))
  bad = pc.or_kleene(pc.is_null(col), pc.equal(col, ""))
  if pc.any(bad).as_py():
    r = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
    _key(path, f"row {first + r}", name, col[r].as_py())        # raises: empty or missing
  enc = pc.dictionary_encode(col)
  remap = np.fromiter((ids.setdefault(k, len(ids)) for k in enc.dictionary.to_pylist()),
                      np.int32, len(enc.dictionary))
  return remap[enc.indices.to_numpy(zero_copy_only=False)]


def read_table_interactions(path, log: Log, user_col, item_col, time_col):
  """A CSV / Parquet log into `log`, a batch at a time (columnar: no Python work per row).
  CSV: the user and item columns are read as text; the time column as pyarrow infers it."""
  pa = pyarrow_module()
  for first, batch in iter_batches(path, [user_col, item_col, time_col],
                                   text_columns=(user_col, item_col), batch_rows=1 << 20):
    log.add_batch(_keys(pa, path, first, user_col, batch.column(user_col), log.user_ids),
                  _keys(pa, path, first, item_col, batch.column(item_col), log.item_ids),
                  _times(pa, path, first, time_col, batch.column(time_col)))


# ----------------------------------------------------------------------------- processing
