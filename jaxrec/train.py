"""`python -m jaxrec.train --config configs/<method>.py[:variant] --workdir DIR`.

With no flags: TIGER on the built-in synthetic data set. A workdir with a checkpoint
resumes. Overrides: `--config.train.epochs=5`."""
from absl import flags
from ml_collections import config_flags

from jaxrec import cli, distributed
from jaxrec.config import default_config_path
from jaxrec.pipeline import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", default_config_path(), "Config file[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: workdir/<method>-<variant>).")
cli.define_distributed_flags()


def main(argv):
  del argv
  cfg = _CONFIG.value
  workdir = _WORKDIR.value or f"workdir/{cfg.method}-{cfg.get('variant', 'default')}"
  train_and_evaluate(cfg, workdir)
  if distributed.is_primary():
    print(f"results in {workdir}/results.json")


if __name__ == "__main__":
  cli.run(main)
