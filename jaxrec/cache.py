"""Derived data on disk (text embeddings, `cf` runs, code tables) that checks itself.

An entry is a data file plus a JSON sidecar written last and atomically, recording the
file's size and sha256 (`seal`): an entry without its sidecar was never finished, one whose
file differs from it is damaged (`check`). Damaged entries are moved aside (`move_aside`)
and rebuilt by their owners, with one line saying so. `Claim` makes several processes that
need the same entry build it once: the first takes the claim (an exclusive lock file), the
others wait and then read its result; a claim whose holder is gone (its process died, or
its heartbeat stopped) is taken over.

JAX's persistent compilation cache needs none of this: a damaged entry is reported as a
warning and the program is compiled again (tests/test_cache.py checks it).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import socket
import threading
import time
from typing import Callable, Optional

from jaxrec.checkpoint import write_atomic

_CHUNK = 1 << 22


def digest(path: str) -> dict:
  """{"bytes": size, "sha256": hex digest} of a file."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(_CHUNK), b""):
      h.update(block)
  return {"bytes": os.path.getsize(path), "sha256": h.hexdigest()}


def seal(path: str, sidecar: str, meta: dict) -> dict:
  """Writes `sidecar`: `meta` plus the data file's name, size and checksum. Last, atomically:
  an entry is complete once its sidecar exists."""
  record = {**meta, "file": os.path.basename(path), **digest(path)}
  write_atomic(sidecar, json.dumps(record, indent=2))
  return record


def read_sidecar(sidecar: str) -> Optional[dict]:
  """The sidecar's record, or None when it is missing or unreadable."""
  try:
    with open(sidecar) as f:
      record = json.load(f)
  except (OSError, ValueError):
    return None
  return record if isinstance(record, dict) else None


def check(path: str, sidecar: str, legacy: Optional[Callable[[str], Optional[str]]] = None
          ) -> Optional[str]:
  """None when the entry is whole, else what is wrong with it, in a few words. A sidecar
  written before checksums were recorded is accepted when `legacy(path)` finds no problem."""
  if not os.path.exists(path):
    return "missing"
  if not os.path.exists(sidecar):
    return f"no {os.path.basename(sidecar)} (written last: the entry was never finished)"
  record = read_sidecar(sidecar)
  if record is None:
    return f"{os.path.basename(sidecar)} is unreadable"
  if "sha256" not in record:
    return legacy(path) if legacy is not None else "no checksum recorded"
  size = os.path.getsize(path)
  if size != record["bytes"]:
    return (f"{size:,} bytes where {record['bytes']:,} were written"
            + (" (truncated)" if size < record["bytes"] else ""))
  if digest(path)["sha256"] != record["sha256"]:
    return "its checksum differs from the one recorded (the bytes are damaged)"
  return None


def move_aside(path: str) -> str:
  """Renames a damaged file or folder to `<path>.damaged` (replacing an older one) and
  returns the new name: kept to look at, never read again."""
  aside = path + ".damaged"
  if os.path.isdir(aside):
    shutil.rmtree(aside, ignore_errors=True)
  elif os.path.exists(aside):
    os.remove(aside)
  os.replace(path, aside)
  return aside


def clean_temporaries(path: str) -> list:
  """Removes what killed writers of `path` left (`<path>.tmp*`); call it holding the claim."""
  gone = []
  for tmp in glob.glob(glob.escape(path) + ".tmp*"):
    (shutil.rmtree if os.path.isdir(tmp) else os.remove)(tmp)
    gone.append(tmp)
  return gone


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:       # someone else's live process
    return True
  return True


class Claim:
  """`with Claim(path + ".lock", log):` the holder builds the entry; others wait. The lock
  file holds the holder's pid, host and start time, and its modification time is refreshed
  every `heartbeat` seconds; a claim is stale when its process is gone (same host) or its
  heartbeat is older than `stale_after` seconds (another host)."""

  def __init__(self, lock: str, log: Callable[[str], None] = print, poll: float = 0.2,
               heartbeat: float = 30.0, stale_after: float = 600.0):
    self.lock, self.log, self.poll = lock, log, poll
    self.heartbeat, self.stale_after = heartbeat, stale_after
    self._stop = threading.Event()
    self._thread = None

  def _holder(self) -> Optional[dict]:
    record = read_sidecar(self.lock)
    return record or {}

  def _stale(self, holder: dict) -> Optional[str]:
    try:
      age = time.time() - os.path.getmtime(self.lock)
    except OSError:
      return None                       # released meanwhile
    if holder.get("host") == socket.gethostname() and "pid" in holder:
      return None if _alive(int(holder["pid"])) else f"its process {holder['pid']} is gone"
    if age > self.stale_after:
      return f"its heartbeat stopped {age:.0f} s ago"
    return None

  def _try(self) -> bool:
    try:
      fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      json.dump({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}, f)
    return True

  def __enter__(self):
    os.makedirs(os.path.dirname(os.path.abspath(self.lock)), exist_ok=True)
    waiting = False
    while not self._try():
      holder = self._holder()
      why = self._stale(holder)
      if why:
        stale = f"{self.lock}.stale-{os.getpid()}"
        try:
          os.replace(self.lock, stale)          # one taker wins; the others retry
          os.remove(stale)
          self.log(f"{self.lock}: a claim left by a killed run ({why}) was taken over")
        except OSError:
          pass
        continue
      if not waiting:
        self.log(f"{self.lock}: another process (pid {holder.get('pid')} on "
                 f"{holder.get('host')}) is building this entry; waiting for it")
        waiting = True
      time.sleep(self.poll)
    self._thread = threading.Thread(target=self._beat, daemon=True)
    self._thread.start()
    return self

  def _beat(self):
    while not self._stop.wait(self.heartbeat):
      try:
        os.utime(self.lock)
      except OSError:
        return

  def __exit__(self, *exc):
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    try:
      os.remove(self.lock)
    except OSError:
      pass
    return False
