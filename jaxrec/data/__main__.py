"""`python -m jaxrec.data --config configs/tiger.py:instruments`: load a data set through the
normal path and print its statistics."""
import json

from ml_collections import config_flags

from jaxrec import cli
from jaxrec.config import default_config_path
from jaxrec.data import leave_one_out, load_dataset

_CONFIG = config_flags.DEFINE_config_file("config", default_config_path(), "Config file[:variant].")


def main(argv):
  del argv
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
