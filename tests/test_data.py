"""Readers (good and bad files), splits, synthetic structure, batching."""
import json
import os

import numpy as np
import pytest

from jaxrec.data import (BatchIterator, DataError, bucket_lengths, drop_short_users,
                         eval_batches, from_sequences, leave_one_out, plan_batches, readers,
                         synthetic)
from jaxrec.metrics import rank_metrics_np

SHARED = os.environ.get("JAXREC_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", "..",
                                                        "shared", "data"))
INSTRUMENTS = os.path.join(SHARED, "instruments")


def write(path, text):
  with open(path, "w") as f:
    f.write(text)
  return str(path)


# ---------------------------------------------------------------- LETTER JSON

def test_letter_reads_sequences_features_and_index(tmp_path):
  write(tmp_path / "T.inter.json", json.dumps({"u1": [0, 1, 2], "u2": [2, 1, 0, 1]}))
  np.save(tmp_path / "T.emb.npy", np.arange(6, dtype=np.float32).reshape(3, 2))
  write(tmp_path / "T.index.json", json.dumps(
      {"0": ["<a_1>", "<b_2>"], "1": ["<a_1>", "<b_3>"], "2": ["<a_0>", "<b_0>"]}))
  ds = readers.read_letter(str(tmp_path), "T", features=("emb",), index=True)
  assert ds.n_users == 2 and ds.n_items == 3 and ds.n_interactions == 7
  np.testing.assert_array_equal(ds.sequence(1), [2, 1, 0, 1])
  np.testing.assert_array_equal(ds.codes_NxC, [[1, 2], [1, 3], [0, 0]])
  assert ds.features["emb"].dtype == np.float32


@pytest.mark.parametrize("files,needle", [
    ({"T.inter.json": '{"u1": [0, 1,, 2]}'}, "T.inter.json: line 1 column 14: malformed JSON"),
    ({"T.inter.json": '{"u1": [0, "x", 2]}'}, "user 'u1' position 1: item id 'x' is not an integer"),
    ({"T.inter.json": '{"u1": [0, 1, 2, 7]}', "T.item.json": '{"0": {}, "1": {}, "2": {}}'},
     "user 'u1' position 3: item id 7 is out of range (0..2)"),
    ({"T.inter.json": '{"u1": [0, 1, 2]}', "T.index.json": '{"0": ["<a_1>"], "1": ["<a_1>", "<b_2>"]}'},
     "item '1': has 2 codes, other items have 1 (wrong depth)"),
    ({"T.inter.json": '{"u1": [0, 1, 2]}', "T.index.json": '{"0": ["a1"]}'},
     "item '0': code 'a1' at level 0 is not of the form <a_12>"),
])
def test_letter_bad_inputs_name_file_and_record(tmp_path, files, needle):
  for name, text in files.items():
    write(tmp_path / name, text)
  with pytest.raises(DataError) as e:
    readers.read_letter(str(tmp_path), "T", index="T.index.json" in files)
  assert needle in str(e.value), str(e.value)
  assert str(tmp_path) in str(e.value)


def test_feature_rows_and_nan_are_rejected(tmp_path):
  write(tmp_path / "T.inter.json", json.dumps({"u1": [0, 1, 2]}))
  write(tmp_path / "T.item.json", json.dumps({"0": {}, "1": {}, "2": {}}))  # 3 items
  np.save(tmp_path / "T.short.npy", np.zeros((2, 4), np.float32))
  bad = np.zeros((3, 4), np.float32)
  bad[1, 2] = np.nan
  np.save(tmp_path / "T.nan.npy", bad)
  with pytest.raises(DataError, match=r"T\.short\.npy: feature 'short' has 2 rows but the data set has 3"):
    readers.read_letter(str(tmp_path), "T", features=("short",))
  with pytest.raises(DataError, match=r"T\.nan\.npy: row 1: feature 'nan' has a non-finite value"):
    readers.read_letter(str(tmp_path), "T", features=("nan",))
  write(tmp_path / "T.junk.npy", "not an array")
  with pytest.raises(DataError, match=r"T\.junk\.npy: not a readable \.npy array"):
    readers.read_letter(str(tmp_path), "T", features=("junk",))


def test_short_users_dropped_with_count_or_error(tmp_path, caplog):
  ds = from_sequences("x", [[0, 1, 2, 3], [1, 2], [0, 2, 1]], 4, user_keys=["a", "b", "c"])
  kept = drop_short_users(ds, 3, "drop", "x.inter.json")
  assert kept.n_users == 2 and kept.user_keys == ["a", "c"]
  assert "dropped 1 of 3 users" in caplog.text
  with pytest.raises(DataError, match=r"x\.inter\.json: user 'b': has 2 interactions"):
    drop_short_users(ds, 3, "error", "x.inter.json")


# ---------------------------------------------------------------- ETEGRec jsonl

def _etegrec_files(tmp_path, test_line=None):
  write(tmp_path / "E.emb_map.json", json.dumps({"i0": 1, "i1": 2, "i2": 3, "i3": 4}))
  write(tmp_path / "E.train.jsonl",
        '{"user_id": "u", "target_id": "i1", "inter_history": ["i0"]}\n'
        '{"user_id": "u", "target_id": "i2", "inter_history": ["i0", "i1"]}\n')
  write(tmp_path / "E.valid.jsonl", '{"user_id": "u", "target_id": "i3", "inter_history": ["i1", "i2"]}\n')
  write(tmp_path / "E.test.jsonl", test_line or
        '{"user_id": "u", "target_id": "i0", "inter_history": ["i2", "i3"]}\n')
  np.save(tmp_path / "E.sasrec.npy", np.ones((5, 3), np.float32))  # row 0 = padding


def test_etegrec_rebuilds_sequences(tmp_path):
  _etegrec_files(tmp_path)
  ds = readers.read_etegrec(str(tmp_path), "E", features=("sasrec",))
  np.testing.assert_array_equal(ds.sequence(0), [0, 1, 2, 3, 0])
  assert ds.features["sasrec"].shape == (4, 3)  # the 1-based padding row is dropped


@pytest.mark.parametrize("line,needle", [
    ('{"user_id": "u", "target_id": "i0"}', "E.test.jsonl: line 1: missing required field 'inter_history'"),
    ('{"user_id": "u", "target_id": "zz", "inter_history": ["i3"]}', "E.test.jsonl: line 1: item 'zz' is not in E.emb_map.json"),
    ('{"user_id": "u", "target_id": "i0", "inter_history": ["i1"]}', "E.test.jsonl: line 1: history of user 'u' does not continue"),
    ('{"user_id": "u", ', "E.test.jsonl: line 1: malformed JSON"),
])
def test_etegrec_bad_lines(tmp_path, line, needle):
  _etegrec_files(tmp_path, line + "\n")
  with pytest.raises(DataError) as e:
    readers.read_etegrec(str(tmp_path), "E")
  assert needle in str(e.value), str(e.value)


# ---------------------------------------------------------------- RecBole

def test_recbole_sorts_by_timestamp_and_maps_items(tmp_path):
  write(tmp_path / "R.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "a\tx\t5\t3\na\ty\t4\t1\nb\ty\t3\t2\na\tz\t1\t2\n")
  ds = readers.read_recbole(str(tmp_path), "R")
  assert ds.item_keys == ["x", "y", "z"]
  np.testing.assert_array_equal(ds.sequence(0), [1, 2, 0])  # y (t=1), z (t=2), x (t=3)


@pytest.mark.parametrize("inter,item,needle", [
    ("user_id:token\trating:float\na\t1\n", None, "R.inter: line 1: missing required column 'item_id'"),
    ("user_id:token\titem_id:token\na\tx\textra\n", None, "R.inter: line 2: has 3 tab-separated columns, the header has 2"),
    ("user_id:token\titem_id:token\ttimestamp:float\na\tx\tyesterday\n", None, "R.inter: line 2: timestamp 'yesterday' is not a number"),
    ("user_id:token\titem_id:token\na\tq\n", "item_id:token\nx\n", "R.inter: line 2: item 'q' is not in R.item"),
    ("user_id\titem_id:token\n", None, "R.inter: line 1: header column 1 'user_id' is not of the form name:type"),
    ("user_id:token\titem_id:tokn\n", None, "R.inter: line 1: header column 2 'item_id:tokn': type "
     "'tokn' is not one of RecBole's token, token_seq, float, float_seq"),
    ("user_id:token\titem_id:float\n", None, "R.inter: line 1: column 'item_id' has type 'float': "
     "an id column must be 'item_id:token'"),
    ("user_id:token\titem_id:token\na\tx\nb\t \n", None, "R.inter: line 3: the item_id field is empty"),
    ("user_id:token\titem_id:token\na\tx\n", "item_id:token\ttitle:token_seq\nx\tA\n\tB\n",
     "R.item: line 3: the item_id field is empty"),
])
def test_recbole_bad_inputs(tmp_path, inter, item, needle):
  write(tmp_path / "R.inter", inter)
  if item:
    write(tmp_path / "R.item", item)
  with pytest.raises(DataError) as e:
    readers.read_recbole(str(tmp_path), "R")
  assert needle in str(e.value), str(e.value)


# ---------------------------------------------------------------- splits

def test_leave_one_out_invariants():
  ds, _ = synthetic.generate(synthetic.SyntheticSpec(n_users=60, n_items=50, n_topics=2,
                                                     n_subtopics=3, seed=3))
  max_len = 5
  splits = leave_one_out(ds, max_len)
  lengths = ds.lengths_U
  assert len(splits["train"]) == int((lengths - 3).sum())
  for name, offset in (("test", 1), ("valid", 2)):
    s = splits[name]
    np.testing.assert_array_equal(s.end_S, ds.offsets_U1[1:] - offset)
  for s in splits.values():
    # the target is never inside its own history window, histories are capped and never
    # reach back before the user's first item
    assert (s.end_S - s.start_S <= max_len).all() and (s.end_S > s.start_S).all()
    assert (s.start_S >= ds.offsets_U1[s.user_S]).all()
    assert (s.end_S < ds.offsets_U1[s.user_S + 1]).all()
  tr = splits["train"]  # training never sees the valid or test position as a target
  assert (tr.end_S <= ds.offsets_U1[tr.user_S + 1] - 3).all()


# ---------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic_and_structured():
  spec = synthetic.SyntheticSpec(n_users=400, n_items=300, seed=7)
  a, st = synthetic.generate(spec)
  b, _ = synthetic.generate(spec)
  np.testing.assert_array_equal(a.items_I, b.items_I)
  np.testing.assert_array_equal(a.features["content"], b.features["content"])
  assert not np.array_equal(a.items_I, synthetic.generate(
      synthetic.SyntheticSpec(n_users=400, n_items=300, seed=8))[0].items_I)
  # a transition-aware oracle beats most-popular clearly on the test targets
  test = leave_one_out(a, 20)["test"]
  last = a.items_I[test.end_S - 1]
  target = a.items_I[test.end_S]
  oracle = np.argsort(-synthetic.oracle_scores(st, last), axis=1)[:, :10]
  pop = np.argsort(-np.bincount(a.items_I, minlength=a.n_items))[:10]
  r_oracle = rank_metrics_np(oracle, target, (10,))["recall@10"]
  r_pop = rank_metrics_np(np.tile(pop, (len(target), 1)), target, (10,))["recall@10"]
  assert r_oracle > 2 * r_pop, (r_oracle, r_pop)


# ---------------------------------------------------------------- batching

def _toy():
  ds, _ = synthetic.generate(synthetic.SyntheticSpec(n_users=50, n_items=40, n_topics=2,
                                                     n_subtopics=2, seed=1))
  return ds, leave_one_out(ds, 8)


def test_batches_have_fixed_shapes_and_masked_padding():
  ds, splits = _toy()
  buckets = bucket_lengths((3, 5), 8)
  assert buckets == (3, 5, 8)
  seen = []
  for batch in eval_batches(ds, splits["train"], 16, buckets):
    b, l = batch["history_BxL"].shape
    assert b == 16 and l in buckets
    lens = batch["mask_BxL"].sum(1)
    assert (batch["history_BxL"][~batch["mask_BxL"]] == 0).all()
    assert (lens[batch["weight_B"] == 0] == 0).all()
    # each real row's mask is a left-aligned prefix that fits its bucket
    real = batch["weight_B"] > 0
    assert (lens[real] >= 1).all() and (lens[real] <= l).all()
    seen.append(int(real.sum()))
  assert sum(seen) == len(splits["train"])  # every sample once, padding never counted


def test_one_shape_per_program_off_the_cpu_and_the_shapes_compiled_ahead():
  """data.shapes: 'auto' keeps the buckets on CPU and pads to max_len on an accelerator;
  the iterator names the lengths of an epoch's batches and gives a padding batch of each."""
  assert bucket_lengths((3, 5), 8, "auto", "cpu") == (3, 5, 8)
  assert bucket_lengths((3, 5), 8, "auto", "tpu") == (8,)
  assert bucket_lengths((3, 5), 8, "max_len", "cpu") == (8,)
  assert bucket_lengths((3, 5), 8, "buckets", "gpu") == (3, 5, 8)
  ds, splits = _toy()
  it = BatchIterator(ds, splits["train"], 16, (3, 5, 8), shuffle=True, seed=0)
  lengths = it.lengths()
  assert lengths == sorted({b["history_BxL"].shape[1] for b in it.epoch_batches()})
  pad = it.padding_batch(lengths[0])
  real = next(b for b in BatchIterator(ds, splits["train"], 16, (3, 5, 8), True, 0).epoch_batches()
              if b["history_BxL"].shape[1] == lengths[0])
  assert {k: (v.shape, v.dtype) for k, v in pad.items()} == {k: (v.shape, v.dtype) for k, v in real.items()}
  assert not pad["weight_B"].any() and not pad["mask_BxL"].any()


def test_batch_content_matches_split():
  ds, splits = _toy()
  sp = splits["valid"]
  batch = next(eval_batches(ds, sp, 4, (8,)))
  for r in range(4):
    hist = batch["history_BxL"][r][batch["mask_BxL"][r]]
    u = batch["user_B"][r]
    seq = ds.sequence(u)
    np.testing.assert_array_equal(hist, seq[:-2][-8:])
    assert batch["target_B"][r] == seq[-2]


def test_shuffle_depends_on_seed_and_epoch():
  _, splits = _toy()
  first = lambda s, e: plan_batches(splits["train"], 8, (3, 5, 8), True, s, e)[0][1]
  assert np.array_equal(first(0, 0), first(0, 0))
  assert not np.array_equal(first(0, 0), first(0, 1))


def test_iterator_state_round_trip():
  ds, splits = _toy()
  it = BatchIterator(ds, splits["train"], 8, (3, 5, 8), shuffle=True, seed=0)
  gen = it.epoch_batches()
  for _ in range(3):
    next(gen)
  state = json.loads(json.dumps(it.get_state()))  # must survive JSON
  expected = [b["target_B"] for b in gen] + [b["target_B"] for b in it.epoch_batches()]
  it2 = BatchIterator(ds, splits["train"], 8, (3, 5, 8), shuffle=True, seed=0)
  it2.set_state(state)
  got = [b["target_B"] for b in it2.epoch_batches()] + [b["target_B"] for b in it2.epoch_batches()]
  assert len(got) == len(expected)
  for a, b in zip(expected, got):
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- shared data

@pytest.mark.skipif(not os.path.exists(os.path.join(INSTRUMENTS, "Instruments.inter.json")),
                    reason="shared Instruments data not available")
def test_instruments_statistics_and_corrupted_copy(tmp_path):
  ds = readers.read_letter(INSTRUMENTS, "Instruments", features=("sasrec32",), index=True)
  assert (ds.n_users, ds.n_items, ds.n_interactions) == (24772, 9922, 206153)
  assert ds.features["sasrec32"].shape == (9922, 32)
  assert ds.codes_NxC.shape == (9922, 4)
  text = open(os.path.join(INSTRUMENTS, "Instruments.inter.json")).read()
  write(tmp_path / "Instruments.inter.json", text[: len(text) // 2])
  with pytest.raises(DataError) as e:
    readers.read_letter(str(tmp_path), "Instruments")
  msg = str(e.value)
  assert "Instruments.inter.json: line" in msg and "malformed JSON" in msg and "\n" not in msg


def test_feature_rows_define_catalogue_without_item_file(tmp_path):
  write(tmp_path / "T.inter.json", json.dumps({"u1": [0, 1, 2], "u2": [1, 5]}))
  np.save(tmp_path / "T.emb.npy", np.zeros((3, 2), np.float32))
  # fewer rows than the ids used: the feature file is named, with the interaction
  with pytest.raises(DataError, match=r"T\.emb\.npy: has 3 rows but .*T\.inter\.json uses item "
                     r"id 5 \(user 'u2'\): row i must be item i"):
    readers.read_letter(str(tmp_path), "T", features=("emb",))


def test_more_feature_rows_than_items_used_is_a_warning(tmp_path, caplog):
  write(tmp_path / "T.inter.json", json.dumps({"u1": [0, 1, 2]}))
  np.save(tmp_path / "T.emb.npy", np.zeros((5, 2), np.float32))
  ds = readers.read_letter(str(tmp_path), "T", features=("emb",))
  assert ds.n_items == 5
  assert "T.emb.npy: 5 rows, the interactions use item ids up to 2: the 2 items" in caplog.text


def test_complex_and_float32_overflowing_features_are_named(tmp_path):
  write(tmp_path / "T.inter.json", json.dumps({"u1": [0, 1, 2]}))
  np.save(tmp_path / "T.cx.npy", np.ones((3, 2), np.complex64))
  with pytest.raises(DataError, match=r"T\.cx\.npy: feature 'cx' has dtype complex64: expected real"):
    readers.read_letter(str(tmp_path), "T", features=("cx",))
  big = np.zeros((3, 2))
  big[2, 1] = 1e300
  np.save(tmp_path / "T.big.npy", big)
  with pytest.raises(DataError, match=r"T\.big\.npy: row 2: feature 'big' has the value 1e\+300 at "
                     r"column 1, beyond float32's range"):
    readers.read_letter(str(tmp_path), "T", features=("big",))


@pytest.mark.parametrize("group", [2, 3, 4])
def test_whole_updates_end_every_epoch_on_a_whole_update(group):
  """data.whole_updates (iid, train.accumulate = group): a multiple of `group` batches an
  epoch, the full batches first, the samples left spread over the last `group` (sizes
  differing by at most one); every sample once; the same order as without it."""
  _, splits = _toy()
  split = splits["train"]
  n, b = len(split), 8
  plan = plan_batches(split, b, (3, 5, 8), True, 0, 0, iid=True, group=group)
  assert len(plan) % group == 0 and len(plan) == group * -(-n // (group * b))
  sizes = [int((c >= 0).sum()) for _, c in plan]
  assert all(s == b for s in sizes[:-group]) and sum(sizes) == n
  assert max(sizes[-group:]) - min(sizes[-group:]) <= 1
  idx = np.concatenate([c[c >= 0] for _, c in plan])
  plain = np.concatenate([c[c >= 0] for _, c in plan_batches(split, b, (3, 5, 8), True, 0, 0,
                                                               iid=True)])
  np.testing.assert_array_equal(idx, plain)


def test_iid_batches_mix_lengths_and_cover_every_sample_once():
  """data.batching='iid': every sample once per epoch, batches of mixed history lengths each
  padded to the bucket of its longest, only the last batch padded; the order depends on
  (seed, epoch) only; the resumed iterator yields the same batches."""
  ds, splits = _toy()
  split = splits["train"]
  plan = plan_batches(split, 8, (3, 5, 8), True, 0, 0, iid=True)
  idx = np.concatenate([p[1] for p in plan])
  real = idx[idx >= 0]
  assert sorted(real.tolist()) == list(range(len(split)))
  assert (idx[:-8] >= 0).all() and len(plan) == -(-len(split) // 8)
  lens = split.hist_len_S
  for length, chunk in plan:
    chunk = chunk[chunk >= 0]
    assert length == min(b for b in (3, 5, 8) if b >= lens[chunk].max())
  assert any(len(set(np.searchsorted((3, 5, 8), lens[c[c >= 0]]))) > 1 for _, c in plan)
  again = plan_batches(split, 8, (3, 5, 8), True, 0, 0, iid=True)
  assert all(np.array_equal(a[1], b[1]) for a, b in zip(plan, again))
  assert not np.array_equal(plan[0][1], plan_batches(split, 8, (3, 5, 8), True, 0, 1, iid=True)[0][1])
  it = BatchIterator(ds, split, 8, (3, 5, 8), shuffle=True, seed=0, iid=True)
  gen = it.epoch_batches()
  next(gen)
  state = json.loads(json.dumps(it.get_state()))
  rest = [b["target_B"] for b in gen]
  it2 = BatchIterator(ds, split, 8, (3, 5, 8), shuffle=True, seed=0, iid=True)
  it2.set_state(state)
  assert all(np.array_equal(a, b["target_B"]) for a, b in zip(rest, it2.epoch_batches()))
