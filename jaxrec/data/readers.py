"""Readers for the formats the field publishes. Each returns a validated `Dataset`.

- LETTER / LC-Rec JSON: `<name>.inter.json`, optional `<name>.item.json`,
  `<name>.<feature>.npy`, `<name>.index.json`.
- ETEGRec jsonl splits: `<name>.{train,valid,test}.jsonl` + `<name>.emb_map.json`.
- RecBole atomic files: `<name>.inter` (typed TSV header), optional `<name>.item`.

Every problem is raised as `DataError(file, record, problem)`: one line a person can act on.
"""
from __future__ import annotations

import json
import os
import re
from typing import Optional, Sequence

import numpy as np

from jaxrec.data.dataset import DataError, Dataset, from_sequences, validate_features

_TOKEN_RE = re.compile(r"^<([A-Za-z]+)_(\d+)>$")


def _require(path):
  if not os.path.exists(path):
    raise DataError(path, None, "file not found")


def open_text(path):
  """The file as a text stream (UTF-8, universal newlines), or a DataError naming the line
  of the first byte that is not UTF-8."""
  import io
  _require(path)
  with open(path, "rb") as f:
    data = f.read()
  try:
    return io.StringIO(data.decode("utf-8"), newline=None)
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    raise DataError(path, f"line {line}", f"not UTF-8 text (byte {e.start})") from None


def read_json(path):
  """json.load with errors that say file, line and column."""
  _require(path)
  try:
    with open(path, "r", encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise DataError(path, f"line {e.lineno} column {e.colno}", f"malformed JSON ({e.msg})") from None
  except UnicodeDecodeError as e:
    raise DataError(path, f"byte {e.start}", "not UTF-8 text") from None


MAX_ITEM_ID = 2**31 - 1      # item ids are int32 on device
MAX_CODE = 2**20             # far beyond any codebook; the decoder's tables are dense


def _as_item_id(path, record, value, n_items: Optional[int]) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, str)):
    raise DataError(path, record, f"item id {value!r} is not an integer")
  if isinstance(value, str):
    if re.fullmatch(r"\s*-?[0-9]+\s*", value) is None:     # ASCII digits only: not "²", "--5"
      raise DataError(path, record, f"item id {value!r} is not an integer")
    value = int(value)
  if value >= MAX_ITEM_ID:
    raise DataError(path, record, f"item id {value} is too large (ids must be below "
                    f"{MAX_ITEM_ID:,}: number the items 0..N-1)")
  if value < 0 or (n_items is not None and value >= n_items):
    bound = f"0..{n_items - 1}" if n_items is not None else ">= 0"
    raise DataError(path, record, f"item id {value} is out of range ({bound})")
  return value


def read_features(directory, name, feature_names: Sequence[str], n_items: int, rename=None):
  """Loads `<name>.<feature>.npy` matrices, checking rows, dtype and finiteness."""
  out = {}
  for feat in feature_names:
    path = os.path.join(directory, f"{name}.{feat}.npy")
    _require(path)
    try:
      matrix = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises several types for a damaged file
      raise DataError(path, None, f"not a readable .npy array ({type(e).__name__}: {e})") from None
    if rename is not None:
      matrix = rename(path, matrix)
    out[feat] = validate_features(path, feat, matrix, n_items)
  return out


def read_index_json(path, n_items: int):
  """Parses LETTER's `{"item": ["<a_12>", "<b_3>", ...]}` into int32 codes [N, C] and level sizes."""
  raw = read_json(path)
  if not isinstance(raw, dict):
    raise DataError(path, None, "expected a JSON object mapping item id to a list of code tokens")
  depth = None
  prefixes = None
  codes = np.full((n_items, 0), -1, np.int32)
  for key, tokens in raw.items():
    record = f"item {key!r}"
    item = _as_item_id(path, record, key, n_items)
    if not isinstance(tokens, list) or not tokens:
      raise DataError(path, record, "codes must be a non-empty list like [\"<a_12>\", \"<b_3>\"]")
    if depth is None:
      depth = len(tokens)
      codes = np.full((n_items, depth), -1, np.int32)
      prefixes = [None] * depth
    elif len(tokens) != depth:
      raise DataError(path, record, f"has {len(tokens)} codes, other items have {depth} (wrong depth)")
    for level, tok in enumerate(tokens):
      m = _TOKEN_RE.match(tok) if isinstance(tok, str) else None
      if m is None:
        raise DataError(path, record, f"code {tok!r} at level {level} is not of the form <a_12>")
      if prefixes[level] is None:
        prefixes[level] = m.group(1)
      elif m.group(1) != prefixes[level]:
        raise DataError(path, record, f"code {tok!r} at level {level}: expected prefix "
                        f"<{prefixes[level]}_...> like the other items")
      value = int(m.group(2))
      if value >= MAX_CODE:
        raise DataError(path, record, f"code {tok!r} at level {level}: {value} is beyond any "
                        f"codebook (codes must be below {MAX_CODE:,})")
      codes[item, level] = value
  if depth is None:
    raise DataError(path, None, "no items")
  missing = np.flatnonzero(codes[:, 0] < 0)
  if len(missing):
    raise DataError(path, f"item {int(missing[0])}", f"has no codes ({len(missing)} items missing)")
  sizes = [int(s) for s in codes.max(0) + 1]
  return codes, sizes


def _read_inter_arrays(directory, name, n_items: Optional[int]):
  """`jaxrec.data prepare --layout arrays`' sequences, memory-mapped and checked a block at a
  time: (offsets [U + 1] int64, items [I] int32, 1 + the largest item id)."""
  off_path, items_path = (os.path.join(directory, f"{name}.inter_{k}.npy") for k in ("offsets", "items"))
  _require(off_path)
  try:
    offsets = np.load(off_path, mmap_mode="r", allow_pickle=False)
    items = np.load(items_path, mmap_mode="r", allow_pickle=False)
  except (ValueError, OSError) as e:
    raise DataError(off_path, None, f"unreadable with {os.path.basename(items_path)} ({e})") from None
  if offsets.ndim != 1 or offsets.dtype.kind != "i" or len(offsets) < 1 or offsets[0] != 0:
    raise DataError(off_path, None, "expected int64 offsets [users + 1] starting at 0")
  if items.ndim != 1 or items.dtype != np.int32 or offsets[-1] != len(items):
    raise DataError(items_path, None, f"expected int32 item ids [{int(offsets[-1]):,}] (the "
                    f"offsets' end), found {items.dtype} {items.shape}")
  steps = np.diff(offsets)
  if (steps < 0).any():
    raise DataError(off_path, f"user {int(np.flatnonzero(steps < 0)[0])}", "offsets decrease")
  used = 0
  for s in range(0, len(items), 1 << 24):           # a block at a time: bounded memory
    block = np.asarray(items[s:s + (1 << 24)])
    bad = np.flatnonzero((block < 0) | (block >= (n_items or MAX_ITEM_ID)))
    if len(bad):
      pos = s + int(bad[0])
      user = int(np.searchsorted(offsets, pos, side="right")) - 1
      raise DataError(items_path, f"user {user} position {pos - int(offsets[user])}",
                      f"item id {int(block[bad[0]])} is outside 0..{(n_items or MAX_ITEM_ID) - 1}")
    used = max(used, int(block.max(initial=-1)) + 1)
  return np.asarray(offsets, np.int64), items, used


def read_letter(directory, name, features=(), index=False) -> Dataset:
  """LETTER / LC-Rec JSON: `{"user": [item ids]}` with chronological items; or the same
  sequences as memory-mapped arrays (`<name>.inter_offsets.npy`, `<name>.inter_items.npy`,
  `jaxrec.data prepare --layout arrays`) where there is no inter.json."""
  inter_path = os.path.join(directory, f"{name}.inter.json")
  if os.path.exists(os.path.join(directory, f"{name}.inter_items.npy")):
    if os.path.exists(inter_path):
      raise DataError(inter_path, None, f"and {name}.inter_items.npy both hold the sequences: "
                      "keep one of them")
    return _read_letter_arrays(directory, name, features, index)
  raw = read_json(inter_path)
  if not isinstance(raw, dict):
    raise DataError(inter_path, None, "expected a JSON object mapping user to a list of item ids")
  n_items, item_keys, item_text = _read_items(directory, name)
  seqs, users = [], []
  for user, items in raw.items():
    if not isinstance(items, list):
      raise DataError(inter_path, f"user {user!r}", "value must be a list of item ids")
    seqs.append([_as_item_id(inter_path, f"user {user!r} position {p}", it, n_items)
                 for p, it in enumerate(items)])
    users.append(str(user))
  used = 1 + max((max(s) for s in seqs if s), default=-1)
  where = lambda: users[next(i for i, s in enumerate(seqs) if s and max(s) == used - 1)]
  n_items, feats, codes, sizes, item_keys = _catalogue(directory, name, features, index,
                                                       n_items, used, inter_path, where, item_keys)
  return from_sequences(name, seqs, n_items, features=feats, codes_NxC=codes, code_sizes=sizes,
                        user_keys=_user_keys(directory, name, users), item_keys=item_keys,
                        item_text=item_text)


def _read_letter_arrays(directory, name, features, index) -> Dataset:
  n_items, item_keys, item_text = _read_items(directory, name)
  offsets, items, used = _read_inter_arrays(directory, name, n_items)
  items_path = os.path.join(directory, f"{name}.inter_items.npy")
  where = lambda: str(int(np.searchsorted(offsets, int(np.argmax(items)), side="right")) - 1)
  n_items, feats, codes, sizes, item_keys = _catalogue(directory, name, features, index,
                                                       n_items, used, items_path, where, item_keys)
  users = _user_keys(directory, name, [str(u) for u in range(len(offsets) - 1)])
  return Dataset(name=name, n_items=n_items, offsets_U1=offsets, items_I=items, features=feats,
                 codes_NxC=codes, code_sizes=sizes, user_keys=users, item_keys=item_keys,
                 item_text=item_text)


def _read_items(directory, name):
  """`<name>.item.json`: (number of items, keys, text per item), or Nones without it."""
  item_path = os.path.join(directory, f"{name}.item.json")
  item_keys = item_text = None
  n_items = None
  if os.path.exists(item_path):
    meta = read_json(item_path)
    if not isinstance(meta, dict):
      raise DataError(item_path, None, "expected a JSON object mapping item id to its attributes")
    n_items = len(meta)
    seen = set()
    for k in meta:  # ids must be exactly 0..n-1
      i = _as_item_id(item_path, f"item {k!r}", k, n_items)
      if i in seen:
        raise DataError(item_path, f"item {k!r}", f"item id {i} appears twice")
      seen.add(i)
    item_keys = [str(i) for i in range(n_items)]
    item_text = [None] * n_items
    for k, attrs in meta.items():
      item_text[int(k)] = _item_text(item_path, f"item {k!r}", attrs)
  return n_items, item_keys, item_text


def _catalogue(directory, name, features, index, n_items, used, inter_path, where, item_keys):
  """The catalogue's size (item.json's, else the features' rows, else the ids used), its
  features, given codes and item keys. `where()`: the user holding the largest item id."""
  if n_items is None and features:
    # Without an item file the feature matrices define the catalogue (row i = item i).
    first = os.path.join(directory, f"{name}.{features[0]}.npy")
    try:
      shape = np.load(first, mmap_mode="r", allow_pickle=False).shape
      n_items = int(shape[0]) if len(shape) == 2 else None
    except Exception:  # unreadable: read_features reports it below
      n_items = None
    if n_items is not None and n_items < used:
      raise DataError(first, None, f"has {n_items} rows but {inter_path} uses item id "
                      f"{used - 1} (user {where()!r}): row i must be item i for every item "
                      "id the interactions use")
    if n_items is not None and n_items > used:
      import logging
      logging.warning("%s: %d rows, the interactions use item ids up to %d: the %d items after "
                      "them, which no one interacted with, are in the catalogue (recommendable, "
                      "never a target)", first, n_items, used - 1, n_items - used)
  if n_items is None:
    n_items = used
  feats = read_features(directory, name, features, n_items)
  codes = sizes = None
  if index:
    codes, sizes = read_index_json(os.path.join(directory, f"{name}.index.json"), n_items)
  # `jaxrec.data prepare` writes the raw keys (ASINs, user ids) of the ids beside them
  item_keys = _key_map(directory, name, "item", n_items) or item_keys
  return n_items, feats, codes, sizes, item_keys


def _user_keys(directory, name, users: list) -> list:
  """The users' raw keys from `<name>.user_map.json` where it names them."""
  user_map = _key_map(directory, name, "user", None)
  if user_map is None:
    return users
  return [user_map[int(u)] if u.isdigit() and int(u) < len(user_map) else u for u in users]


def _key_map(directory, name, kind: str, n: Optional[int]):
  """`<name>.<kind>_map.json` ({"<id>": "<raw key>"}) as a list indexed by id, or None."""
  path = os.path.join(directory, f"{name}.{kind}_map.json")
  if not os.path.exists(path):
    return None
  raw = read_json(path)
  if not isinstance(raw, dict):
    raise DataError(path, None, "expected a JSON object mapping id to raw key")
  n = len(raw) if n is None else n
  keys = [None] * n
  for k, v in raw.items():
    i = _as_item_id(path, f"{kind} {k!r}", k, n)
    keys[i] = str(v)
  if None in keys:
    raise DataError(path, f"{kind} {keys.index(None)}", f"missing: every {kind} id 0..{n - 1} "
                    "needs its key")
  return keys


def _item_text(path, record, attrs) -> dict:
  """An item's text fields: strings kept, numbers written out, lists of strings joined by
  spaces; null or empty fields dropped."""
  if not isinstance(attrs, dict):
    raise DataError(path, record, "item attributes must be a JSON object like "
                    '{"title": "...", "description": "..."}')
  out = {}
  for field, value in attrs.items():
    if value is None or isinstance(value, bool):
      continue
    if isinstance(value, (int, float)):
      value = str(value)
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
      value = " ".join(value)
    elif not isinstance(value, str):
      raise DataError(path, f"{record} field {field!r}", f"expected text, a number or a list of "
                      f"strings, got {type(value).__name__}")
    if value.strip():
      out[str(field)] = value
  return out


def read_etegrec(directory, name, features=()) -> Dataset:
  """ETEGRec jsonl splits. Each user's sequence is rebuilt from its lines, in file order
  (train, valid, test): the first line's history, then every line's target. Each line's
  history must be a suffix of what came before (histories may be truncated)."""
  map_path = os.path.join(directory, f"{name}.emb_map.json")
  emb_map = read_json(map_path)
  if not isinstance(emb_map, dict) or not emb_map:
    raise DataError(map_path, None, "expected a non-empty JSON object mapping item key to integer id")
  for k, v in emb_map.items():
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
      raise DataError(map_path, f"item {k!r}", f"id {v!r} is not a non-negative integer")
  values = sorted(emb_map.values())
  base = values[0]
  n_items = len(values)
  if values != list(range(base, base + n_items)) or base not in (0, 1):
    raise DataError(map_path, None, "ids must be 0..N-1 (or 1..N with 0 for padding), each once")
  key_to_id = {str(k): v - base for k, v in emb_map.items()}
  seqs = {}
  for split in ("train", "valid", "test"):
    path = os.path.join(directory, f"{name}.{split}.jsonl")
    with open_text(path) as f:
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        rec = f"line {lineno}"
        try:
          obj = json.loads(line)
        except json.JSONDecodeError as e:
          raise DataError(path, rec, f"malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
          raise DataError(path, rec, "expected a JSON object")
        for field in ("user_id", "target_id", "inter_history"):
          if field not in obj:
            raise DataError(path, rec, f"missing required field '{field}'")
        hist = obj["inter_history"]
        if not isinstance(hist, list):
          raise DataError(path, rec, "'inter_history' must be a list")

        def lookup(key):
          if str(key) not in key_to_id:
            raise DataError(path, rec, f"item {key!r} is not in {os.path.basename(map_path)}")
          return key_to_id[str(key)]

        hist = [lookup(k) for k in hist]
        target = lookup(obj["target_id"])
        user = str(obj["user_id"])
        seq = seqs.get(user)
        if seq is None:
          seqs[user] = hist + [target]
          continue
        if hist and seq[len(seq) - len(hist):] != hist:
          raise DataError(path, rec, f"history of user {user!r} does not continue the sequence "
                          "built from earlier lines (lines must be chronological, train before "
                          "valid before test)")
        seq.append(target)

  def strip_padding_row(path, matrix):
    if base == 1 and matrix.ndim == 2 and matrix.shape[0] == n_items + 1:
      return matrix[1:]  # SASRec exports keep row 0 for padding
    return matrix

  feats = read_features(directory, name, features, n_items, rename=strip_padding_row)
  id_to_key = [None] * n_items
  for k, v in key_to_id.items():
    id_to_key[v] = k
  return from_sequences(name, list(seqs.values()), n_items, features=feats,
                        user_keys=list(seqs.keys()), item_keys=id_to_key)


RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")


def _read_atomic(path, required):
  """Reads a RecBole atomic file: a `name:type` header and tab-separated rows."""
  with open_text(path) as f:
    header = f.readline().rstrip("\n").rstrip("\r").split("\t")
    fields, types = [], []
    for col, h in enumerate(header):
      if ":" not in h:
        raise DataError(path, "line 1", f"header column {col + 1} {h!r} is not of the form name:type")
      field, kind = h.split(":", 1)
      if kind not in RECBOLE_TYPES:
        raise DataError(path, "line 1", f"header column {col + 1} {h!r}: type {kind!r} is not "
                        f"one of RecBole's {', '.join(RECBOLE_TYPES)}")
      fields.append(field)
      types.append(kind)
    for req in required:
      if req not in fields:
        raise DataError(path, "line 1", f"missing required column '{req}' (header has {fields})")
      if types[fields.index(req)] != "token":
        raise DataError(path, "line 1", f"column '{req}' has type "
                        f"{types[fields.index(req)]!r}: an id column must be '{req}:token'")
    rows = []
    for lineno, line in enumerate(f, 2):
      line = line.rstrip("\n").rstrip("\r")
      if not line:
        continue
      parts = line.split("\t")
      if len(parts) != len(fields):
        raise DataError(path, f"line {lineno}", f"has {len(parts)} tab-separated columns, the "
                        f"header has {len(fields)}")
      rows.append(parts)
  return fields, rows


def read_recbole(directory, name, features=(), user_field="user_id", item_field="item_id",
                 time_field="timestamp") -> Dataset:
  """RecBole atomic files. Items are numbered in `.item` order if present, else by first
  appearance; each user's interactions are sorted by timestamp (stable) when there is one."""
  inter_path = os.path.join(directory, f"{name}.inter")
  fields, rows = _read_atomic(inter_path, [user_field, item_field])
  ui, ii = fields.index(user_field), fields.index(item_field)
  ti = fields.index(time_field) if time_field in fields else None
  item_path = os.path.join(directory, f"{name}.item")
  item_ids = {}
  item_text = None
  from_item_file = os.path.exists(item_path)
  if from_item_file:
    ifields, irows = _read_atomic(item_path, [item_field])
    col = ifields.index(item_field)
    for lineno, r in enumerate(irows, 2):
      if not r[col].strip():
        raise DataError(item_path, f"line {lineno}", f"the {item_field} field is empty")
      if r[col] in item_ids:
        raise DataError(item_path, f"line {lineno}", f"item {r[col]!r} is listed twice")
      item_ids[r[col]] = len(item_ids)
    # every other column is an item text field, by its name without the type
    item_text = [{f: v for f, v in zip(ifields, r) if f != item_field and v.strip()}
                 for r in irows]
  per_user = {}
  for lineno, r in enumerate(rows, 2):
    item = r[ii]
    for f, v in ((user_field, r[ui]), (item_field, item)):
      if not v.strip():
        raise DataError(inter_path, f"line {lineno}", f"the {f} field is empty")
    if item not in item_ids:
      if from_item_file:
        raise DataError(inter_path, f"line {lineno}", f"item {item!r} is not in {name}.item")
      item_ids[item] = len(item_ids)
    t = 0.0
    if ti is not None:
      try:
        t = float(r[ti])
      except ValueError:
        raise DataError(inter_path, f"line {lineno}", f"timestamp {r[ti]!r} is not a number") from None
    per_user.setdefault(r[ui], []).append((t, item_ids[item]))
  seqs = []
  for events in per_user.values():
    events.sort(key=lambda e: e[0])  # stable: ties keep file order
    seqs.append([i for _, i in events])
  n_items = len(item_ids)
  feats = read_features(directory, name, features, n_items)
  return from_sequences(name, seqs, n_items, features=feats, user_keys=list(per_user.keys()),
                        item_keys=list(item_ids.keys()), item_text=item_text)
