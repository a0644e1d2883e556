"""Content fingerprints: what names derived data (code tables, caches) by its inputs."""
from __future__ import annotations

import hashlib
import json

import numpy as np


def fingerprint(*parts) -> str:
  """sha256 over arrays (their bytes, dtype and shape) and JSON-able values."""
  h = hashlib.sha256()
  for p in parts:
    if isinstance(p, np.ndarray):
      h.update(str((p.dtype.str, p.shape)).encode())
      h.update(np.ascontiguousarray(p).tobytes())
    else:
      h.update(json.dumps(p, sort_keys=True, default=str).encode())
  return h.hexdigest()[:32]
