"""`python -m jaxrec.data prepare`: raw public dumps -> the LETTER JSON files a run reads
(`data.source="letter"`), in one streaming pass over the interactions and one over the
metadata.

  python -m jaxrec.data prepare --format amazon2014 --reviews reviews_Beauty_5.json.gz \\
      --meta meta_Beauty.json.gz --out data/beauty --name Beauty
  python -m jaxrec.data prepare --format amazon2018 --reviews Cat.json.gz --meta meta_Cat.json.gz ...
  python -m jaxrec.data prepare --format amazon2023 --reviews Cat.jsonl.gz --meta meta_Cat.jsonl.gz ...
  python -m jaxrec.data prepare --format csv --interactions log.csv [--items items.csv] ...

Formats (any file may be gzip-compressed: detected by its magic bytes):
  amazon2014  McAuley's 2014 release, one Python dict literal per line ("loose JSON"):
              reviews reviewerID, asin, unixReviewTime; meta asin, title, brand,
              categories (list of lists), description (text).
  amazon2018  JSON lines: reviews reviewerID, asin, unixReviewTime; meta asin, title, brand,
              category (list), description (list of strings).
  amazon2023  JSON lines: reviews user_id, parent_asin (the item), timestamp (ms);
              meta parent_asin, title, store (the brand), categories (list), description (list).
  csv         CSV or Parquet (by the .parquet / .pq suffix or the PAR1 magic bytes) with columns
              user, item, timestamp (--user_col / --item_col / --time_col), read in batches
              with pyarrow (`pip install -e ".[prepare]"`); the optional item table has the
              item column and any of title, brand, categories, description.

Processing, in this order:
  1. duplicates removed: the same (user, item, timestamp) is kept once (its first line);
  2. k-core (--core, default 5; 0 or 1: none): users and items with fewer than k interactions
     are dropped, repeatedly, until every user and every item has at least k (a fixed point);
  3. each user's items in chronological order, ties in input order;
  4. users and items numbered 0.. in the order of their raw keys (sorted as strings), so the
     ids do not depend on the order of the lines;
  5. item text from the metadata (second pass, only the items that survived): title, brand,
     categories (flattened, duplicates dropped, joined with ", "), description (joined with
     spaces); HTML tags removed, entities unescaped, whitespace collapsed; "" where missing.

Output in --out: <name>.inter.json {"<user id>": [item ids, oldest first]} (or, with
--layout arrays, <name>.inter_offsets.npy and <name>.inter_items.npy: user u's items are
items[offsets[u]:offsets[u + 1]], memory-mapped by the reader),
<name>.item.json {"<item id>": {"title", "brand", "categories", "description"}},
<name>.user_map.json and <name>.item_map.json {"<id>": "<raw key>"}.

Counts to check against (Amazon 2014 5-core files, as in the S3-Rec / P5 / TIGER papers):
  Beauty               22,363 users  12,101 items  198,502 interactions
  Sports and Outdoors  35,598 users  18,357 items  296,337 interactions
  Toys and Games       19,412 users  11,924 items  167,597 interactions
"""
from __future__ import annotations

import html
import json
import os
import re
from typing import Callable, Optional

import numpy as np

from jaxrec.data.raw import (META_FIELDS, Log, iter_records, iter_table, pyarrow_module,
                             read_amazon_reviews, read_table_interactions, require)
from jaxrec.errors import ConfigError, DataError

FORMATS = ("amazon2014", "amazon2018", "amazon2023", "csv")
LAYOUTS = ("json", "arrays")
TEXT_FIELDS = ("title", "brand", "categories", "description")

_TAG_RE = re.compile(r"<\s*/?\s*[A-Za-z!][^<>]*>")
_SPACE_RE = re.compile(r"\s+")


def sort_and_dedup(users, items, times):
  """The interactions sorted by (user, time), ties in input order, each distinct (user,
  item, time) kept once (its first line): (users, items, times). One stable sort of the
  whole log; the duplicates are found among the rows that share a (user, time) with another
  (few), so that the memory is a few arrays of the log's length."""
  order = np.lexsort((times, users))               # stable: ties keep input order
  users, items, times = users[order], items[order], times[order]
  del order
  n = len(users)
  tie = np.zeros(n, bool)
  if n > 1:
    tie[1:] = (users[1:] == users[:-1]) & (times[1:] == times[:-1])
  drop = np.zeros(n, bool)
  rows = np.flatnonzero(tie | np.append(tie[1:], False))   # every row of a multi-row run
  if len(rows):
    run = np.cumsum(~tie)[rows]                    # (user, time) run of each such row
    sub = np.lexsort((rows, items[rows], run))     # by run, item, then position (input order)
    r, it = run[sub], items[rows][sub]
    again = np.zeros(len(sub), bool)
    again[1:] = (r[1:] == r[:-1]) & (it[1:] == it[:-1])
    drop[rows[sub][again]] = True
  if drop.any():
    keep = ~drop
    users, items, times = users[keep], items[keep], times[keep]
  return users, items, times


def k_core(users, items, k: int, n_users: int, n_items: int):
  """(mask over the interactions that survive, rounds that removed something)."""
  keep = np.ones(len(users), bool)
  rounds = 0
  if k <= 1:
    return keep, rounds
  while True:
    u, i = users[keep], items[keep]
    ucount = np.bincount(u, minlength=n_users)
    icount = np.bincount(i, minlength=n_items)
    ok = (ucount[u] >= k) & (icount[i] >= k)
    if ok.all():
      return keep, rounds
    idx = np.flatnonzero(keep)
    keep[idx[~ok]] = False
    rounds += 1


def clean_text(value) -> str:
  """One line of text: lists flattened (categories de-duplicated by the caller), HTML tags
  removed, entities unescaped, whitespace collapsed."""
  if value is None or isinstance(value, bool):
    return ""
  if isinstance(value, (list, tuple)):
    return " ".join(t for t in (clean_text(v) for v in value) if t)
  text = _TAG_RE.sub(" ", str(value))
  text = html.unescape(text)
  return _SPACE_RE.sub(" ", text).strip()


def _flatten(value) -> list:
  if value is None or isinstance(value, bool):
    return []
  if isinstance(value, (list, tuple)):
    return [x for v in value for x in _flatten(v)]
  return [value]


def clean_categories(value) -> str:
  seen, out = set(), []
  for v in _flatten(value):
    t = clean_text(v)
    if t and t not in seen:
      seen.add(t)
      out.append(t)
  return ", ".join(out)


def item_attributes(raw: dict) -> dict:
  """{title, brand, categories, description} of an item's raw metadata fields."""
  return {f: clean_categories(raw.get(f)) if f == "categories" else clean_text(raw.get(f))
          for f in TEXT_FIELDS}


def _key_order(keys) -> np.ndarray:
  """The argsort of an object array of strings (Python's sort: no fixed-width copy)."""
  return np.array(sorted(range(len(keys)), key=keys.__getitem__), np.int64)


def _write_json(path, obj):
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, ensure_ascii=False)
  os.replace(tmp, path)


def _write_inter_json(path, uid, iid, bounds):
  """`{"<user id>": [item ids]}`, written a user at a time (never the whole as objects)."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("{")
    for u in range(len(bounds) - 1):
      items = ", ".join(map(str, iid[bounds[u]:bounds[u + 1]].tolist()))
      f.write(f'{", " if u else ""}"{u}": [{items}]')
    f.write("}")
  os.replace(tmp, path)


def _write_npy(path, array):
  tmp = path + ".tmp.npy"
  np.save(tmp, array)
  os.replace(tmp, path)


def _inputs(fmt, out, name, reviews, meta, interactions, items, core):
  """(the interactions file, the metadata file or None), the arguments checked."""
  if fmt not in FORMATS:
    raise ConfigError(f"--format={fmt!r}: expected one of {', '.join(FORMATS)}")
  if not name:
    raise ConfigError("--name is required (the output files are <name>.inter.json, ...)")
  if not out:
    raise ConfigError("--out is required (the output directory)")
  if core < 0:
    raise ConfigError(f"--core={core}: must be >= 0")
  if fmt == "csv":
    source, meta_path = interactions, items
    if not source:
      raise ConfigError("--format csv needs --interactions (a CSV or Parquet file)")
    if reviews or meta:
      raise ConfigError("--format csv takes --interactions / --items, not --reviews / --meta")
    pyarrow_module()
  else:
    source, meta_path = reviews, meta
    if not source:
      raise ConfigError(f"--format {fmt} needs --reviews (the reviews dump)")
    if interactions or items:
      raise ConfigError(f"--format {fmt} takes --reviews / --meta, not --interactions / --items")
  for p in (source, meta_path):
    if p:
      require(p)
  return source, meta_path


def _ranks(keys) -> np.ndarray:
  """Each raw id's rank among the raw keys sorted as strings: int32 [len(keys)]."""
  rank = np.empty(len(keys), np.int32)
  rank[_key_order(keys)] = np.arange(len(keys), dtype=np.int32)
  return rank


def _compact(ids, n: int):
  """Ids 0..n-1 (some unused) -> 0..m-1 keeping their order: (new ids, used mask [n])."""
  used = np.bincount(ids, minlength=n) > 0
  return (np.cumsum(used, dtype=np.int64) - 1).astype(np.int32)[ids], used


def _item_texts(fmt, meta_path, item_map, item_col) -> list:
  """Pass 2: the attributes of each surviving item (None where the metadata has none)."""
  text = [None] * len(item_map)
  if not meta_path:
    return text
  wanted = {k: i for i, k in enumerate(item_map)}
  if fmt == "csv":
    for _, cols in iter_table(meta_path, [item_col], optional=TEXT_FIELDS,
                              text_columns=(item_col,) + TEXT_FIELDS):
      for r, key in enumerate(cols[item_col]):
        i = wanted.get(None if key is None else str(key).strip())
        if i is not None and text[i] is None:
          text[i] = item_attributes({f: cols[f][r] for f in TEXT_FIELDS if f in cols})
    return text
  key_f, fields = META_FIELDS[fmt]
  for lineno, obj in iter_records(meta_path, loose=fmt == "amazon2014"):
    if key_f not in obj:
      raise DataError(meta_path, f"line {lineno}", f"missing field {key_f!r} (the item key of "
                      f"{fmt} metadata)")
    i = wanted.get(str(obj[key_f]).strip())
    if i is not None and text[i] is None:            # the first record of an item counts
      text[i] = item_attributes({f: obj.get(src) for f, src in fields.items()})
  return text


def prepare(fmt: str, out: str, name: str, reviews: Optional[str] = None,
            meta: Optional[str] = None, interactions: Optional[str] = None,
            items: Optional[str] = None, core: int = 5, user_col: str = "user",
            item_col: str = "item", time_col: str = "timestamp", layout: str = "json",
            log: Callable[[str], None] = print) -> dict:
  """Converts raw files to `<out>/<name>.{inter,item,user_map,item_map}.json`; returns the
  counts it printed. `layout='arrays'` writes the sequences as `<name>.inter_offsets.npy`
  (int64 [users + 1]) and `<name>.inter_items.npy` (int32 [interactions]) instead of
  inter.json: a reader memory-maps them (logs of 100M interactions)."""
  if layout not in LAYOUTS:
    raise ConfigError(f"--layout={layout!r}: must be one of {', '.join(LAYOUTS)}")
  source, meta_path = _inputs(fmt, out, name, reviews, meta, interactions, items, core)
  raw = Log()                                   # pass 1: the interactions, as int arrays
  if fmt == "csv":
    read_table_interactions(source, raw, user_col, item_col, time_col)
  else:
    read_amazon_reviews(source, fmt, raw)
  user_keys = np.array(list(raw.user_ids), dtype=object)
  item_keys = np.array(list(raw.item_ids), dtype=object)
  users, items_, times = raw.arrays()
  n_raw = len(users)
  log(f"raw: {n_raw:,} interactions, {len(user_keys):,} users, {len(item_keys):,} items")
  if n_raw == 0:
    raise DataError(source, None, "has no interactions")
  # ids in the order of their raw keys (sorted as strings): the output's order
  u_rank, i_rank = _ranks(user_keys), _ranks(item_keys)
  user_keys, item_keys = user_keys[np.argsort(u_rank)], item_keys[np.argsort(i_rank)]
  users, items_ = u_rank[users], i_rank[items_]
  del raw, u_rank, i_rank
  users, items_, times = sort_and_dedup(users, items_, times)
  n_dedup = len(users)
  log(f"after dedup: {n_dedup:,} interactions ({n_raw - n_dedup:,} duplicates removed)")
  del times                                       # the order is all the output needs of it
  mask, rounds = k_core(users, items_, core, len(user_keys), len(item_keys))
  if not mask.any():
    raise DataError(source, None, f"no interactions survive the {core}-core (--core): no user "
                    f"and item set where each has {core} interactions; try a smaller --core")
  if not mask.all():
    users, items_ = users[mask], items_[mask]
  del mask
  uid, u_used = _compact(users, len(user_keys))
  iid, i_used = _compact(items_, len(item_keys))
  del users, items_
  user_map = [str(k) for k in user_keys[u_used]]
  item_map = [str(k) for k in item_keys[i_used]]
  n_users, n_items = len(user_map), len(item_map)
  counts = {"raw": n_raw, "dedup": n_dedup, "core": core, "rounds": rounds,
            "users": n_users, "items": n_items, "interactions": int(len(uid))}
  log(f"after {core}-core ({rounds} rounds): {n_users:,} users, {n_items:,} items, "
      f"{len(uid):,} interactions")
  bounds = np.searchsorted(uid, np.arange(n_users + 1))
  text = _item_texts(fmt, meta_path, item_map, item_col)    # pass 2: the metadata
  counts["items_with_meta"] = sum(t is not None for t in text)
  log(f"metadata: {counts['items_with_meta']:,} of {n_items:,} items"
      + ("" if meta_path else " (no --meta / --items given)"))
  empty = {f: "" for f in TEXT_FIELDS}
  os.makedirs(out, exist_ok=True)
  paths = []
  if layout == "json":
    paths.append(os.path.join(out, f"{name}.inter.json"))
    _write_inter_json(paths[-1], uid, iid, bounds)
  else:
    for kind, array in (("offsets", bounds.astype(np.int64)), ("items", iid.astype(np.int32))):
      paths.append(os.path.join(out, f"{name}.inter_{kind}.npy"))
      _write_npy(paths[-1], array)
  del uid, iid
  outputs = {"item": {str(i): t if t is not None else dict(empty) for i, t in enumerate(text)},
             "user_map": {str(i): k for i, k in enumerate(user_map)},
             "item_map": {str(i): k for i, k in enumerate(item_map)}}
  for kind, obj in outputs.items():
    paths.append(os.path.join(out, f"{name}.{kind}.json"))
    _write_json(paths[-1], obj)
  log("wrote " + ", ".join(paths))
  return counts
