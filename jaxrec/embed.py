"""`python -m jaxrec.embed --config configs/X.py[:variant] --model PATH`: item text -> the
`text` item feature (`jaxrec/text/embedding.py`), written to `embed.out_dir` (default: the
cache, `$JAXREC_CACHE_DIR` or ~/.cache/jaxrec, `text/`) or `--out`."""
from absl import flags
from ml_collections import config_flags

from jaxrec import cli
from jaxrec.config import default_config_path
from jaxrec.data import load_dataset
from jaxrec.text.embedding import embed_dataset, text_dir

_CONFIG = config_flags.DEFINE_config_file("config", default_config_path(), "Config file[:variant].")
_MODEL = flags.DEFINE_string("model", None, "A local sentence-transformers folder.", required=True)
_OUT = flags.DEFINE_string("out", "", "Output folder (default: embed.out_dir, else the cache).")


def main(argv):
  del argv
  cfg = _CONFIG.value
  ds = load_dataset(cfg.data)
  embed_dataset(cfg, ds, _MODEL.value, _OUT.value or text_dir(cfg))


if __name__ == "__main__":
  cli.run(main)
