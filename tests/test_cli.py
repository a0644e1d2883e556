"""Config validation up front and one-line command errors (issue 16)."""
import os
import subprocess
import sys

import pytest

import tiger
from jaxrec import cli
from jaxrec.config import ConfigError, config_problems, get_config, validate_config
from jaxrec.data import DataError, load_dataset
from jaxrec.methods import get_method

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("method", ["tiger", "letter", "etegrec", "sasrec", "simcit", "siit"])
@pytest.mark.parametrize("variant", ["default", "tiny"])
def test_shipped_configs_are_valid(method, variant):
  m = get_method(method)
  assert config_problems(get_config(method, variant), m.kind, m.heads) == []


@pytest.mark.parametrize("key,value,first_line", [
    ("tokenizer.levels", 0, "tokenizer.levels=0: must be an integer >= 1"),
    ("train.beam", 0, "train.beam=0: must be an integer >= 1"),
    ("train.batch_size", 0, "train.batch_size=0: must be an integer >= 1"),
    ("train.lr", -1.0, "train.lr=-1.0: must be a number > 0"),
    ("train.schedule", "step", "train.schedule='step': must be one of 'constant', 'cosine', 'linear'"),
    ("tokenizer.collision", "drop", "tokenizer.collision='drop': must be one of 'suffix', "
     "'sinkhorn', 'none'"),
    ("train.beam", 5, "train.beam=5: the beam must be >= 10"),
    ("model.dropout", 1.5, "model.dropout=1.5: must be a number in [0, 1)"),
])
def test_out_of_domain_values_are_named(key, value, first_line):
  cfg = tiger.get_config("tiny")
  section, name = key.split(".")
  cfg[section][name] = value
  with pytest.raises(ConfigError) as e:
    validate_config(cfg)
  assert first_line in str(e.value)


def test_every_problem_is_listed_at_once():
  cfg = tiger.get_config("tiny")
  cfg.train.batch_size, cfg.train.epochs = 0, 0
  assert len(config_problems(cfg)) == 2


def test_unknown_override_names_the_key_and_what_exists():
  cfg = tiger.get_config("tiny")
  msg = cli.unknown_override(["--config.train.foo=1"], cfg)
  assert msg.startswith("--config.train.foo: unknown config key 'foo' (train has: accumulate, batch_size,")
  assert cli.unknown_override(["--config.trian.lr=1"], cfg).startswith(
      "--config.trian.lr: unknown config key 'trian' (the config has: ")
  assert cli.unknown_override(["--config.train.lr=1", "--workdir=x"], cfg) is None


def test_empty_and_all_short_data_sets_are_one_data_error(tmp_path):
  cfg = tiger.get_config("tiny").data
  cfg.source, cfg.dir, cfg.name, cfg.features = "letter", str(tmp_path), "E", ()
  (tmp_path / "E.inter.json").write_text("{}")
  with pytest.raises(DataError, match="E.inter.json: has no users"):
    load_dataset(cfg)
  (tmp_path / "E.inter.json").write_text('{"1": [1, 2]}')
  with pytest.raises(DataError, match="no user has the 3 interactions"):
    load_dataset(cfg)


@pytest.mark.parametrize("args,message", [
    (["--config.train.foo=1"], "error: --config.train.foo: unknown config key 'foo'"),
    (["--config.train.beam=0"], "error: train.beam=0: must be an integer >= 1"),
])
def test_train_command_fails_in_one_line_before_any_work(tmp_path, args, message):
  out = subprocess.run([sys.executable, "-m", "jaxrec.train", "--config", "configs/tiger.py:tiny",
                        "--workdir", str(tmp_path / "w"), *args], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [out.stderr.strip().splitlines()[0]]
  assert out.stderr.startswith(message)
  assert not os.path.exists(tmp_path / "w" / "config.json")


def test_commands_keep_compiled_programs_in_the_cache_directory(monkeypatch, tmp_path):
  import jax
  from jaxrec import xla
  monkeypatch.delenv("JAXREC_COMPILE_CACHE", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert xla.compile_cache_dir() == str(tmp_path / "jaxrec" / "xla")
  for off in ("off", "0", " "):
    monkeypatch.setenv("JAXREC_COMPILE_CACHE", off)
    assert xla.compile_cache_dir() is None
  monkeypatch.setenv("JAXREC_COMPILE_CACHE", str(tmp_path / "c"))
  assert xla.compile_cache_dir() == str(tmp_path / "c")
  # a process that set its own cache (these tests: the shared test cache) keeps it
  assert xla.enable_compile_cache() == jax.config.jax_compilation_cache_dir != str(tmp_path / "c")
  # a fresh process writes what it compiles there
  code = ("import jax, jax.numpy as jnp; from jaxrec.xla import enable_compile_cache; "
          "print(enable_compile_cache()); "
          "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0); "
          "jax.block_until_ready(jax.jit(lambda x: x * 2 + 1)(jnp.ones(3)))")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == str(tmp_path / "c")
  assert os.listdir(tmp_path / "c")


@pytest.mark.parametrize("flag,env,devices", [
    ([], {}, 2),                                      # the default: two CPU devices
    (["--cpu_devices=3"], {}, 3),
    ([], {"JAX_NUM_CPU_DEVICES": "3"}, 3),            # the environment's choice is kept
    ([], {"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}, 3),
])
def test_commands_split_the_cpu_into_devices(tmp_path, flag, env, devices):
  """The batch is split over the CPU devices (`--cpu_devices`): a batch size they do not
  divide (65: neither 2 nor 3) is one line naming the count and the flag, before anything
  is written."""
  clean = {k: v for k, v in os.environ.items() if k not in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS")}
  out = subprocess.run([sys.executable, "-m", "jaxrec.train", "--config", "configs/tiger.py:tiny",
                        "--workdir", str(tmp_path / "w"), "--config.train.batch_size=60",
                        "--config.train.eval_batch_size=65", *flag], cwd=REPO,
                       env=dict(clean, JAX_PLATFORMS="cpu", **env), capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 2 and out.stderr.strip().splitlines() == [
      f"error: train.eval_batch_size=65 must be divisible by the {devices} devices (on CPU "
      "--cpu_devices sets how many)"], out.stderr[-2000:]
  assert not os.path.exists(tmp_path / "w" / "config.json")
