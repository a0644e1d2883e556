"""`python -m jaxrec.data --config configs/tiger.py:instruments`: load a data set through the
normal path and print its statistics.

`python -m jaxrec.data prepare --format amazon2018 --reviews Cat.json.gz --meta meta_Cat.json.gz
--out DIR --name Cat [--core 5]`: convert raw public dumps (Amazon 2014 / 2018 / 2023, or a
CSV / Parquet log) into the LETTER JSON files `data.source="letter"` reads
(jaxrec/data/prepare.py)."""
import json

from absl import flags
from ml_collections import config_flags

from jaxrec import cli
from jaxrec.config import default_config_path
from jaxrec.data import leave_one_out, load_dataset
from jaxrec.data import prepare as prepare_lib
from jaxrec.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", default_config_path(), "Config file[:variant].")

# `prepare`
_FORMAT = flags.DEFINE_enum("format", None, list(prepare_lib.FORMATS),
                            "prepare: the raw files' format.")
_REVIEWS = flags.DEFINE_string("reviews", None, "prepare (amazon*): the reviews dump.")
_META = flags.DEFINE_string("meta", None, "prepare (amazon*): the item metadata dump (optional).")
_INTERACTIONS = flags.DEFINE_string("interactions", None,
                                    "prepare (csv): the interaction log, CSV or Parquet.")
_ITEMS = flags.DEFINE_string("items", None, "prepare (csv): the item table (optional).")
_OUT = flags.DEFINE_string("out", None, "prepare: the output directory.")
_NAME = flags.DEFINE_string("name", None, "prepare: the data set name (<name>.inter.json, ...).")
_CORE = flags.DEFINE_integer("core", 5, "prepare: k of the k-core filter (0 or 1: none).",
                             lower_bound=0)
_USER_COL = flags.DEFINE_string("user_col", "user", "prepare (csv): the user column.")
_ITEM_COL = flags.DEFINE_string("item_col", "item", "prepare (csv): the item column.")
_TIME_COL = flags.DEFINE_string("time_col", "timestamp", "prepare (csv): the timestamp column.")
_LAYOUT = flags.DEFINE_enum("layout", "json", list(prepare_lib.LAYOUTS),
                            "prepare: the sequences as <name>.inter.json, or as memory-mappable "
                            "<name>.inter_offsets.npy / inter_items.npy (large logs).")

COMMANDS = ("prepare",)


def prepare(rest):
  if rest:
    raise ConfigError(f"prepare: unexpected argument {rest[0]!r} (every input is a --flag)")
  if _FORMAT.value is None:
    raise ConfigError(f"prepare needs --format ({', '.join(prepare_lib.FORMATS)})")
  prepare_lib.prepare(_FORMAT.value, _OUT.value, _NAME.value, reviews=_REVIEWS.value,
                      meta=_META.value, interactions=_INTERACTIONS.value, items=_ITEMS.value,
                      core=_CORE.value, user_col=_USER_COL.value, item_col=_ITEM_COL.value,
                      time_col=_TIME_COL.value, layout=_LAYOUT.value)


def main(argv):
  if len(argv) > 1:
    if argv[1] == "prepare":
      return prepare(argv[2:])
    raise ConfigError(f"unknown command {argv[1]!r}: expected {', '.join(COMMANDS)} or none "
                      "(--config=... prints a data set's statistics)")
  cfg = _CONFIG.value
  ds = load_dataset(cfg.data)
  stats = ds.stats()
  splits = leave_one_out(ds, cfg.data.max_len)
  stats["samples"] = {k: len(v) for k, v in splits.items()}
  print(f"{stats['name']}: {stats['users']:,} users, {stats['items']:,} items, "
        f"{stats['interactions']:,} interactions")
  print(f"sequence length: mean {stats['seq_len_mean']}, min {stats['seq_len_min']}, "
        f"max {stats['seq_len_max']}; density {stats['density']:.6f}")
  for name, shape in stats["features"].items():
    print(f"feature {name}: {shape[0]} x {shape[1]}")
  if stats["codes"]:
    print(f"codes: {stats['codes'][0]} x {stats['codes'][1]} (level sizes {ds.code_sizes})")
  print("samples (max_len {}): ".format(cfg.data.max_len) +
        ", ".join(f"{k} {v:,}" for k, v in stats["samples"].items()))
  print(json.dumps(stats))


if __name__ == "__main__":
  cli.run(main)
