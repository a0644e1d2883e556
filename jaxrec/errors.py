"""The failures jaxrec expects: bad configs, bad data, unusable checkpoints, model folders.
Each message names the file or key, the record and the fix; the command line prints it in
one line (`cli`), where any other exception is a bug and keeps its traceback."""
from __future__ import annotations


class JaxrecError(Exception):
  """Base of every expected failure."""


class ConfigError(JaxrecError, ValueError):
  """A config value is invalid or inconsistent with the data; the message names the key and
  the fix."""


class ConfigMismatchError(ConfigError):
  """A workdir holds a run of another config."""


class DataError(JaxrecError, ValueError):
  """A data file is unusable; the message names the file, the record and the problem."""

  def __init__(self, path, record, problem):
    self.path, self.record, self.problem = str(path), record, problem
    where = f"{path}" if record is None else f"{path}: {record}"
    super().__init__(f"{where}: {problem}")


class CheckpointError(JaxrecError, RuntimeError):
  """No usable checkpoint where one is needed; the message names the directory and the fix."""


class ModelFolderError(JaxrecError, ValueError):
  """A sentence-transformers folder is missing a file or describes an unsupported model;
  the message names the file and the fix."""
