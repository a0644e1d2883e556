"""`python -m jaxrec.data prepare`: tiny raw dumps in every format -> exact LETTER files that
`load_dataset` reads; dedup, an iterated k-core, chronological order with input-order ties,
HTML-free item text, and one-line errors naming the file and the line."""
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxrec.config import get_config
from jaxrec.data import load_dataset
from jaxrec.data import prepare as P
from jaxrec.errors import ConfigError, DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (user, item, time): keys sort differently from their first appearance (U3 first, B0C first)
LOG = [
    ("U3", "B0C", 100),
    ("U3", "B0A", 200),
    ("U3", "B0A", 200),   # duplicate of the line above: removed
    ("U1", "B0A", 50),
    ("U1", "B0C", 300),
    ("U1", "B0B", 300),   # tie with the line above: stays after it
    ("U2", "B0B", 10),
    ("U2", "B0C", 5),     # out of order: first in U2's sequence
    ("U2", "B0A", 10),    # tie with U2's B0B: stays after it
    ("U9", "B0B", 20),    # U9 keeps 2 items after round 1, 1 after round 2: dropped in round 3
    ("U9", "XONE", 30),   # item with one interaction: dropped in round 1
    ("U9", "YTWO", 35),   # item of U9 and U8: dropped in round 2 (when U8 is gone)
    ("U8", "YTWO", 36),   # user with one interaction: dropped in round 1
    ("U7", "B0C", 40),    # user with one interaction: dropped in round 1
    ("U3", "B0C", 400),   # same user and item, another time: kept
]
# ids by sorted key: users U1=0, U2=1, U3=2; items B0A=0, B0B=1, B0C=2
INTER = {"0": [0, 2, 1], "1": [2, 1, 0], "2": [2, 0, 2]}
USER_MAP = {"0": "U1", "1": "U2", "2": "U3"}
ITEM_MAP = {"0": "B0A", "1": "B0B", "2": "B0C"}
ITEMS = {
    "0": {"title": "Foam Cleanser", "brand": "Acme", "categories": "Beauty, Skin Care, Face",
          "description": "Soft & gentle cleanser"},
    "1": {"title": "", "brand": "", "categories": "", "description": ""},   # no metadata
    "2": {"title": "Night Cream & Co", "brand": "", "categories": "Beauty", "description": ""},
}
COUNTS = {"raw": 15, "dedup": 14, "core": 2, "rounds": 3, "users": 3, "items": 3,
          "interactions": 9, "items_with_meta": 2}
DESC = "<p>Soft &amp; gentle</p><br/>\n  cleanser"


def _write(path, lines, gz):
  data = ("\n".join(lines) + "\n").encode()
  if gz:
    with gzip.open(path, "wb") as f:
      f.write(data)
  else:
    path.write_bytes(data)
  return str(path)


def amazon_files(tmp_path, fmt, gz_reviews, gz_meta):
  reviews, meta = [], []
  if fmt == "amazon2014":
    for u, i, t in LOG:
      reviews.append(repr({"reviewerID": u, "asin": i, "reviewerName": "it's", "overall": 5.0,
                           "unixReviewTime": t, "reviewTime": "01 1, 2014"}))
    meta = [repr({"asin": "B0C", "title": "Night Cream &amp; Co", "categories": [["Beauty"]],
                  "salesRank": {"Beauty": 1}}),
            repr({"asin": "XONE", "title": "dropped"}),
            repr({"asin": "B0A", "title": "Foam  Cleanser", "brand": "Acme", "description": DESC,
                  "categories": [["Beauty", "Skin Care"], ["Beauty", "Face"]], "price": 3.5}),
            repr({"asin": "B0C", "title": "second record of B0C: ignored"})]
  elif fmt == "amazon2018":
    for u, i, t in LOG:
      reviews.append(json.dumps({"reviewerID": u, "asin": i, "unixReviewTime": t, "overall": 5.0,
                                 "verified": True}))
    meta = [json.dumps({"asin": "B0C", "title": "Night Cream &amp; Co", "category": ["Beauty"],
                        "description": [], "brand": ""}),
            json.dumps({"asin": "B0A", "title": "Foam Cleanser", "brand": "Acme",
                        "category": ["Beauty", "Skin Care", "Face"],
                        "description": DESC.split("<br/>")})]
  else:
    for u, i, t in LOG:
      reviews.append(json.dumps({"rating": 5.0, "asin": i + "-child", "parent_asin": i,
                                 "user_id": u, "timestamp": t * 1000, "text": "<br />ok"}))
    meta = [json.dumps({"parent_asin": "B0C", "title": "Night Cream &amp; Co",
                        "categories": ["Beauty"], "description": [], "store": None}),
            json.dumps({"parent_asin": "B0A", "title": "Foam Cleanser", "store": "Acme",
                        "main_category": "All Beauty", "categories": ["Beauty", "Skin Care", "Face"],
                        "description": DESC.split("<br/>")})]
  suffix = ".jsonl" if fmt == "amazon2023" else ".json"
  r = _write(tmp_path / ("reviews" + suffix + (".gz" if gz_reviews else "")), reviews, gz_reviews)
  m = _write(tmp_path / ("meta" + suffix + (".gz" if gz_meta else "")), meta, gz_meta)
  return r, m


def read_out(out, name):
  return [json.load(open(os.path.join(out, f"{name}.{k}.json")))
          for k in ("inter", "item", "user_map", "item_map")]


def check_output(out, name):
  inter, items, umap, imap = read_out(out, name)
  assert inter == INTER
  assert items == ITEMS
  assert umap == USER_MAP and imap == ITEM_MAP
  cfg = get_config("tiger", "tiny")
  cfg.data.source, cfg.data.dir, cfg.data.name, cfg.data.features = "letter", str(out), name, ()
  ds = load_dataset(cfg.data)
  assert (ds.n_users, ds.n_items, ds.n_interactions) == (3, 3, 9)
  assert [ds.sequence(u).tolist() for u in range(3)] == [INTER[str(u)] for u in range(3)]
  assert ds.item_text[0]["description"] == "Soft & gentle cleanser"
  assert list(ds.item_keys) == [ITEM_MAP[str(i)] for i in range(3)]     # raw keys, end to end
  assert list(ds.user_keys) == [USER_MAP[str(u)] for u in range(3)]


@pytest.mark.parametrize("fmt,gz_reviews,gz_meta", [("amazon2014", True, False),
                                                    ("amazon2018", False, True),
                                                    ("amazon2023", True, True)])
def test_amazon_formats_give_the_exact_answer(tmp_path, fmt, gz_reviews, gz_meta):
  reviews, meta = amazon_files(tmp_path, fmt, gz_reviews, gz_meta)
  lines = []
  counts = P.prepare(fmt, str(tmp_path / "out"), "Cat", reviews=reviews, meta=meta, core=2,
                     log=lines.append)
  assert counts == COUNTS
  assert lines[:4] == ["raw: 15 interactions, 6 users, 5 items",
                       "after dedup: 14 interactions (1 duplicates removed)",
                       "after 2-core (3 rounds): 3 users, 3 items, 9 interactions",
                       "metadata: 2 of 3 items"]
  check_output(tmp_path / "out", "Cat")


def test_csv_and_parquet_with_renamed_columns(tmp_path):
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq
  rows = ["user,item,timestamp"] + [f"{u},{i},{t}" for u, i, t in LOG]
  log_csv = _write(tmp_path / "log.csv.gz", rows, gz=True)
  items_csv = _write(tmp_path / "items.csv", [
      "item,title,brand,categories,description,price",
      'B0A,Foam Cleanser,Acme,"Beauty, Skin Care, Face","<p>Soft &amp; gentle</p>'
      '<br/>  cleanser",3',
      "B0C,Night Cream &amp; Co,,Beauty,,4"], gz=False)
  counts = P.prepare("csv", str(tmp_path / "a"), "X", interactions=log_csv, items=items_csv,
                     core=2, log=lambda m: None)
  assert counts == COUNTS
  check_output(tmp_path / "a", "X")

  table = pa.table({"uid": [u for u, _, _ in LOG], "iid": [i for _, i, _ in LOG],
                    "ts": np.array([t for _, _, t in LOG], np.int64)})
  pq.write_table(table, tmp_path / "log.parquet")
  pq.write_table(pa.table({"iid": ["B0C", "B0A"], "title": ["Night Cream &amp; Co", "Foam Cleanser"],
                           "brand": [None, "Acme"],
                           "categories": [["Beauty"], ["Beauty", "Skin Care", "Face"]],
                           "description": [None, DESC]}), tmp_path / "items.parquet")
  counts = P.prepare("csv", str(tmp_path / "b"), "X", interactions=str(tmp_path / "log.parquet"),
                     items=str(tmp_path / "items.parquet"), core=2, user_col="uid",
                     item_col="iid", time_col="ts", log=lambda m: None)
  assert counts == COUNTS
  check_output(tmp_path / "b", "X")

  with pytest.raises(DataError, match=r"log.parquet: header: no column 'user'"):
    P.prepare("csv", str(tmp_path / "c"), "X", interactions=str(tmp_path / "log.parquet"),
              log=lambda m: None)


def test_missing_pyarrow_says_what_to_install(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "pyarrow", None)
  path = _write(tmp_path / "log.csv", ["user,item,timestamp", "a,b,1"], gz=False)
  with pytest.raises(ConfigError, match=r'pip install -e "\.\[prepare\]"'):
    P.prepare("csv", str(tmp_path / "o"), "X", interactions=path, log=lambda m: None)


def test_k_core_reaches_the_largest_fixed_point():
  rng = np.random.default_rng(0)
  for trial in range(20):
    n = 300
    users, items = rng.integers(0, 40, n), rng.integers(0, 30, n) ** 2 % 30
    k = int(rng.integers(2, 6))
    keep, _ = P.k_core(users, items, k, 40, 30)
    alive = set(range(n))                      # the naive reference: drop until nothing changes
    while True:
      uc = np.bincount(users[sorted(alive)], minlength=40) if alive else np.zeros(40)
      ic = np.bincount(items[sorted(alive)], minlength=30) if alive else np.zeros(30)
      bad = {j for j in alive if uc[users[j]] < k or ic[items[j]] < k}
      if not bad:
        break
      alive -= bad
    assert set(np.flatnonzero(keep)) == alive


def test_clean_text():
  assert P.clean_text(["<b>A&nbsp;b</b>", "", None, "c  <br>d"]) == "A b c d"
  assert P.clean_text("1 < 2 and 3 > 2") == "1 < 2 and 3 > 2"
  assert P.clean_categories([["A", "B"], ["A", "C &amp; D"]]) == "A, B, C & D"


def test_no_survivor_and_bad_fields_are_one_line_errors(tmp_path):
  path = _write(tmp_path / "r.json", [json.dumps({"reviewerID": "u", "asin": "i",
                                                  "unixReviewTime": 1})], gz=False)
  with pytest.raises(DataError, match="no interactions survive the 5-core"):
    P.prepare("amazon2018", str(tmp_path / "o"), "X", reviews=path, log=lambda m: None)
  path = _write(tmp_path / "r2.json", [json.dumps({"reviewerID": "u", "asin": "i",
                                                   "unixReviewTime": 1}),
                                       json.dumps({"reviewerID": "u", "asin": "i"})], gz=False)
  with pytest.raises(DataError, match=r"r2.json: line 2: missing field 'unixReviewTime'"):
    P.prepare("amazon2018", str(tmp_path / "o"), "X", reviews=path, log=lambda m: None)


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "jaxrec.data", *args], capture_output=True,
                        text=True, cwd=REPO, timeout=120)


def test_command_line_prepares_and_reports_a_broken_line(tmp_path):
  reviews, meta = amazon_files(tmp_path, "amazon2014", True, True)
  with gzip.open(reviews, "rt") as f:
    lines = f.read().splitlines()
  lines[2] = lines[2][:-5]                               # line 3: cut short
  broken = _write(tmp_path / "broken.json.gz", lines, gz=True)
  out = tmp_path / "out"
  # the broken file first: exit 2 and one line naming the file and the line
  res = _cli("prepare", "--format", "amazon2014", "--reviews", broken, "--out", str(out),
             "--name", "Cat")
  assert res.returncode == 2, res.stderr
  err = res.stderr.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f"error: {broken}: line 3: not a Python dict"), err
  res = _cli("prepare", "--format=amazon2014", f"--reviews={reviews}", f"--meta={meta}",
             f"--out={out}", "--name=Cat", "--core=2")
  assert res.returncode == 0, res.stderr
  assert res.stdout.splitlines()[:4] == [
      "raw: 15 interactions, 6 users, 5 items",
      "after dedup: 14 interactions (1 duplicates removed)",
      "after 2-core (3 rounds): 3 users, 3 items, 9 interactions",
      "metadata: 2 of 3 items"]
  check_output(out, "Cat")


def test_a_bad_row_of_a_csv_or_parquet_log_is_named(tmp_path):
  """The columnar reader checks every value: an empty key, a missing or non-numeric time
  is one error naming the file and the row (data rows counted from 1), in any batch."""
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq
  rows = ["user,item,timestamp", "a,b,1", " ,b,2", "c,d,3"]
  with pytest.raises(DataError, match=r"log.csv: row 2: field 'user' is empty"):
    P.prepare("csv", str(tmp_path / "o"), "X", interactions=_write(tmp_path / "log.csv", rows,
                                                                    gz=False), log=lambda m: None)
  rows = ["user,item,timestamp", "a,b,1", "a,c,soon"]
  with pytest.raises(DataError, match=r"log2.csv: row 2: field 'timestamp' is 'soon', not a number"):
    P.prepare("csv", str(tmp_path / "o"), "X", interactions=_write(tmp_path / "log2.csv", rows,
                                                                    gz=False), log=lambda m: None)
  pq.write_table(pa.table({"user": ["a", "b", "c"], "item": ["x", None, "z"],
                           "timestamp": [1.0, 2.0, 3.0]}), tmp_path / "n.parquet")
  with pytest.raises(DataError, match=r"n.parquet: row 2: field 'item' is None"):
    P.prepare("csv", str(tmp_path / "o"), "X", interactions=str(tmp_path / "n.parquet"),
              log=lambda m: None)
  pq.write_table(pa.table({"user": ["a", "b"], "item": ["x", "y"],
                           "timestamp": pa.array([1, None], pa.timestamp("ms"))}),
                 tmp_path / "t.parquet")
  with pytest.raises(DataError, match=r"t.parquet: row 2: field 'timestamp' is None"):
    P.prepare("csv", str(tmp_path / "o"), "X", interactions=str(tmp_path / "t.parquet"),
              log=lambda m: None)


def test_the_arrays_layout_loads_as_the_json_one(tmp_path):
  """--layout arrays: the sequences as memory-mapped .npy (no inter.json), the same Dataset
  as the JSON layout's; both layouts at once, or a bad item id, is one clear error."""
  reviews, meta = amazon_files(tmp_path, "amazon2018", False, False)
  P.prepare("amazon2018", str(tmp_path / "a"), "Cat", reviews=reviews, meta=meta, core=2,
            layout="arrays", log=lambda m: None)
  assert not os.path.exists(tmp_path / "a" / "Cat.inter.json")
  offsets = np.load(tmp_path / "a" / "Cat.inter_offsets.npy")
  items = np.load(tmp_path / "a" / "Cat.inter_items.npy")
  assert offsets.dtype == np.int64 and items.dtype == np.int32
  assert [items[offsets[u]:offsets[u + 1]].tolist() for u in range(3)] == [INTER[str(u)] for u in range(3)]
  inter = json.dumps(INTER)
  with open(tmp_path / "a" / "Cat.inter.json", "w") as f:   # check_output reads the json
    f.write(inter)
  with pytest.raises(DataError, match=r"Cat.inter.json: and Cat.inter_items.npy both hold"):
    check_output(tmp_path / "a", "Cat")
  os.remove(tmp_path / "a" / "Cat.inter.json")
  cfg = get_config("tiger", "tiny")
  cfg.data.source, cfg.data.dir, cfg.data.name, cfg.data.features = "letter", str(tmp_path / "a"), "Cat", ()
  ds = load_dataset(cfg.data)
  assert isinstance(ds.items_I, np.memmap) or isinstance(ds.items_I.base, np.memmap)
  assert [ds.sequence(u).tolist() for u in range(3)] == [INTER[str(u)] for u in range(3)]
  assert list(ds.user_keys) == [USER_MAP[str(u)] for u in range(3)]
  assert ds.item_text[0]["description"] == "Soft & gentle cleanser"
  items[4] = 7
  np.save(tmp_path / "a" / "Cat.inter_items.npy", items)
  with pytest.raises(DataError, match=r"Cat.inter_items.npy: user 1 position 1: item id 7 is "
                     r"outside 0..2"):
    load_dataset(cfg.data)


def test_sort_and_dedup_equals_first_occurrences_in_time_order():
  """Against the definition: the first line of each distinct (user, item, time), then each
  user's rows by time, ties in input order; logs with many ties and duplicates."""
  rng = np.random.default_rng(0)
  for trial in range(30):
    n = int(rng.integers(1, 200))
    users, items = rng.integers(0, 5, n).astype(np.int32), rng.integers(0, 6, n).astype(np.int32)
    times = rng.integers(0, 4, n).astype(np.float64)
    seen, rows = set(), []
    for r in range(n):
      if (users[r], items[r], times[r]) not in seen:
        seen.add((users[r], items[r], times[r]))
        rows.append(r)
    rows.sort(key=lambda r: (users[r], times[r]))           # stable: input order on ties
    got = P.sort_and_dedup(users, items, times)
    for a, b in zip(got, (users[rows], items[rows], times[rows])):
      np.testing.assert_array_equal(a, b)
