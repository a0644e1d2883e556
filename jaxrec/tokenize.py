"""`python -m jaxrec.tokenize --config configs/X.py[:variant] --workdir DIR`: semantic IDs only.

Trains the configured tokenizer on the data set's item features and writes to DIR:
codes.npz + codes.json (the code table, its fingerprint and statistics),
<name>.index.json (LETTER's format), tokenizer_log.jsonl and code_usage.png.
"""
import json
import os

from absl import flags
from ml_collections import config_flags

from jaxrec import cli
from jaxrec.config import default_config_path, validate_config
from jaxrec.data import load_dataset
from jaxrec.methods import code_table, get_method
from jaxrec.pipeline import ensure_features
from jaxrec.tokenizer.build import write_outputs

_CONFIG = config_flags.DEFINE_config_file("config", default_config_path(), "Config file[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", "workdir/tokenize", "Output directory.")


def main(argv):
  del argv
  cfg, workdir = _CONFIG.value, _WORKDIR.value
  table, ds = _tokenize(cfg, workdir)
  index_path = write_outputs(table, workdir, ds, f"{cfg.method} on {ds.name}")
  before, final = table.stats.get("before_resolution", {}), table.stats["final"]
  print(f"items {table.n_items}, depth {table.depth}, sizes {list(table.sizes)}")
  if before:
    print(f"before resolution: used {before['used']}, perplexity {before['perplexity']}, "
          f"colliding items {before['colliding_items']} ({100 * before['collision_rate']:.2f}%), "
          f"largest group {before['largest_group']}")
  print(f"final: used {final['used']}, colliding items {final['colliding_items']}")
  print(f"wrote {os.path.join(workdir, 'codes.npz')}, {index_path}, code_usage.png")


def _tokenize(cfg, workdir):
  method = get_method(cfg.method)
  validate_config(cfg, method.kind, method.heads, method.models)
  ds = ensure_features(cfg, load_dataset(cfg.data), method, log=print)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "tokenizer_log.jsonl"), "a") as logf:
    def log(record):
      print(json.dumps(record), flush=True)
      logf.write(json.dumps(record) + "\n")
      logf.flush()
    table, _ = code_table(cfg, ds, method, workdir, log)
  return table, ds


if __name__ == "__main__":
  cli.run(main)
