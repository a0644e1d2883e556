"""`python -m jaxrec.embed --config configs/X.py[:variant] --model PATH`: item text -> the
`text` item feature (`jaxrec/text/embedding.py`), written to `embed.out_dir` (default: the
cache, `$JAXREC_CACHE_DIR` or ~/.cache/jaxrec, `text/`) or `--out`."""
import os

from absl import flags
from ml_collections import config_flags

from jaxrec import cli
from jaxrec.config import default_config_path
from jaxrec.data import load_dataset
from jaxrec.cache import Claim
from jaxrec.text.embedding import embed_dataset, text_dir

_CONFIG = config_flags.DEFINE_config_file("config", default_config_path(), "Config file[:variant].")
_MODEL = flags.DEFINE_string("model", None, "A local sentence-transformers folder.", required=True)
_OUT = flags.DEFINE_string("out", "", "Output folder (default: embed.out_dir, else the cache).")


def main(argv):
  del argv
  cfg = _CONFIG.value
  ds = load_dataset(cfg.data)
  out = _OUT.value or text_dir(cfg)
  with Claim(os.path.join(out, f"{ds.name}.text.npy.lock")):   # not beside a run embedding it
    embed_dataset(cfg, ds, _MODEL.value, out)


if __name__ == "__main__":
  cli.run(main)
