"""Reader fuzzing (property-based, hypothesis): for every reader, arbitrary bytes and
structurally valid but hostile JSON / TSV / jsonl / npy / index files give a Dataset or a
DataError naming the file, never another exception. Bounded (a few dozen examples per
property, no deadline) so the suite stays fast."""
import io
import json
import os
import tempfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxrec.data import readers
from jaxrec.data.dataset import DataError, Dataset

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

# hostile item ids: the kinds of values a broken export writes
ids = st.one_of(st.integers(-3, 12), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                st.booleans(), st.none(), st.sampled_from(["--5", "²", "3", " 4", "0x1", "", "1e3",
                                                          "٣", "7\n"]),
                st.lists(st.integers(0, 3), max_size=2))
json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(),
                                     st.text(max_size=4)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=3), inner,
                                                                   max_size=3)),
                           max_leaves=8)
codes = st.one_of(st.sampled_from(["<a_1>", "<b_0>", "<c_99999999999>", "<a_-1>", "<a_x>", "a_1",
                                   "<d_2>", "", "<a_1", "<a_²>"]), json_values)


def _check(read, files: dict):
  """Writes `files` (name -> bytes) into a fresh folder and reads it: a Dataset or a
  DataError that names one of the folder's paths."""
  with tempfile.TemporaryDirectory() as d:
    for name, data in files.items():
      with open(os.path.join(d, name), "wb") as f:
        f.write(data)
    try:
      ds = read(d)
    except DataError as e:
      assert d in str(e) or "data.dir" in str(e), str(e)
      return None
    assert isinstance(ds, Dataset)
    assert all(0 <= i < ds.n_items for i in ds.items_I), "an item id outside the catalogue"
    return ds


def _npy(array) -> bytes:
  buf = io.BytesIO()
  np.save(buf, array, allow_pickle=False)
  return buf.getvalue()


@FUZZ
@given(st.binary(max_size=200))
def test_letter_inter_arbitrary_bytes(data):
  _check(lambda d: readers.read_letter(d, "T"), {"T.inter.json": data})


@FUZZ
@given(st.one_of(json_values, st.dictionaries(st.text(max_size=4), st.lists(ids, max_size=5),
                                              max_size=4)))
def test_letter_inter_hostile_json(obj):
  _check(lambda d: readers.read_letter(d, "T"), {"T.inter.json": json.dumps(obj).encode()})


@FUZZ
@given(st.dictionaries(st.text(max_size=3), st.lists(st.integers(0, 4), min_size=1, max_size=5),
                       min_size=1, max_size=3),
       st.dictionaries(ids.map(str), json_values, max_size=5))
def test_letter_item_file_hostile(inter, items):
  _check(lambda d: readers.read_letter(d, "T"),
         {"T.inter.json": json.dumps(inter).encode(), "T.item.json": json.dumps(items).encode()})


@FUZZ
@given(st.sampled_from([np.float32, np.float64, np.int8, np.uint64, np.complex64, np.bool_,
                        np.float16]),
       st.tuples(st.integers(0, 7), st.integers(0, 3)) | st.tuples(st.integers(0, 7)),
       st.sampled_from([0.0, np.nan, np.inf, 1e300, -1.0]))
def test_letter_feature_hostile_npy(dtype, shape, fill):
  with np.errstate(all="ignore"):
    array = np.full(shape, fill).astype(dtype)
  _check(lambda d: readers.read_letter(d, "T", features=("f",)),
         {"T.inter.json": json.dumps({"u": [0, 1, 2]}).encode(), "T.f.npy": _npy(array)})


@FUZZ
@given(st.binary(max_size=120))
def test_letter_feature_arbitrary_bytes(data):
  _check(lambda d: readers.read_letter(d, "T", features=("f",)),
         {"T.inter.json": json.dumps({"u": [0, 1, 2]}).encode(), "T.f.npy": data})


@FUZZ
@given(st.one_of(json_values, st.dictionaries(ids.map(str), st.lists(codes, max_size=4),
                                              max_size=4)))
def test_letter_index_hostile(index):
  _check(lambda d: readers.read_letter(d, "T", index=True),
         {"T.inter.json": json.dumps({"u": [0, 1, 2]}).encode(),
          "T.index.json": json.dumps(index).encode()})


tsv_cells = st.one_of(st.text(alphabet=st.sampled_from(list("ab1.-:\t ²")), max_size=6),
                      st.sampled_from(["user_id:token", "item_id:float", "timestamp:tokn", "1e9",
                                       "nan", "inf", ""]))


@FUZZ
@given(st.binary(max_size=200) | st.lists(st.lists(tsv_cells, max_size=4), max_size=5).map(
    lambda rows: "\n".join("\t".join(r) for r in rows).encode()))
def test_recbole_hostile(data):
  header = b"user_id:token\titem_id:token\ttimestamp:float\n"
  _check(lambda d: readers.read_recbole(d, "R"), {"R.inter": data})
  _check(lambda d: readers.read_recbole(d, "R"), {"R.inter": header + data})


@FUZZ
@given(st.one_of(json_values, st.dictionaries(st.text(max_size=3), ids, max_size=4)),
       st.lists(st.one_of(json_values, st.fixed_dictionaries(
           {"user_id": ids, "target_id": st.sampled_from(["a", "b", 1]),
            "inter_history": st.lists(st.sampled_from(["a", "b", "c", 2]), max_size=3)})),
           max_size=4))
def test_etegrec_hostile(emb_map, lines):
  body = "\n".join(json.dumps(x) for x in lines).encode()
  _check(lambda d: readers.read_etegrec(d, "E"),
         {"E.emb_map.json": json.dumps(emb_map).encode(), "E.train.jsonl": body,
          "E.valid.jsonl": b"", "E.test.jsonl": body[:40]})


def test_what_the_fuzzer_found_is_one_data_error(tmp_path):
  """Cases hypothesis found (each was a traceback before): a RecBole file that is not UTF-8,
  ids like "--5" and "²" that str.isdigit accepts, an id or a code beyond int32."""
  cases = [(lambda d: readers.read_recbole(d, "R"), {"R.inter": b"\x80"}, "R.inter: line 1: not UTF-8"),
           (lambda d: readers.read_letter(d, "T"), {"T.inter.json": b'{"u": [0, 1]}',
                                                     "T.item.json": b'{"--5": null}'},
            "item '--5': item id '--5' is not an integer"),
           (lambda d: readers.read_letter(d, "T"), {"T.inter.json": '{"u": ["²"]}'.encode()},
            "item id '²' is not an integer"),
           (lambda d: readers.read_letter(d, "T"), {"T.inter.json": b'{"u": [2147483648]}'},
            "item id 2147483648 is too large"),
           (lambda d: readers.read_letter(d, "T", index=True),
            {"T.inter.json": b'{"u": [0]}', "T.index.json": b'{"0": ["<c_99999999999>"]}'},
            "code '<c_99999999999>' at level 0: 99999999999 is beyond any codebook")]
  for read, files, needle in cases:
    for f in tmp_path.iterdir():
      f.unlink()
    for name, data in files.items():
      (tmp_path / name).write_bytes(data)
    try:
      read(str(tmp_path))
    except DataError as e:
      assert needle in str(e), str(e)
    else:
      raise AssertionError(f"no DataError for {files}")
