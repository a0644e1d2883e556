"""`python -m jaxrec.serve --export DIR --port 8080`: an exported recommender
(`python -m jaxrec.export`) over HTTP, with FastAPI and uvicorn (`pip install -e ".[serve]"`).

  POST /recommend  {"user": "A1B2", "history": ["B00X", "B00Q"], "k": 10}   ("k" optional)
                   -> {"user", "items", "scores", "ids", ["unknown"], ["fallback"]} as
                      `jaxrec.recommend` writes a line
  GET  /healthz    -> {"status": "ok", the export's method, data set, items, k_max, and the
                      requests and device batches answered so far}

Requests are batched on the device: a queue gathers them for up to --max_wait_ms after the
first (or until --max_batch), and one worker thread answers each batch with one call of the
exported program (batches padded to a power of two: a handful of shapes, compiled before
the server listens unless --nowarmup). A body that is not JSON, an unknown field or a value of the wrong type is a 422
with the reason; a "k" above the export's k_max is a 422 too.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import threading
import time
from typing import Optional, Union

import uvicorn
from absl import flags
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from jaxrec import cli, served

_EXPORT = flags.DEFINE_string("export", None, "Folder written by jaxrec.export.", required=True)
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.")
_PORT = flags.DEFINE_integer("port", 8080, "Port to listen on.")
_K = flags.DEFINE_integer("k", 10, "Items per answer when a request gives no \"k\".", lower_bound=1)
_MAX_BATCH = flags.DEFINE_integer("max_batch", 64, "Most requests in one device batch.", lower_bound=1)
_MAX_WAIT = flags.DEFINE_float("max_wait_ms", 5.0, "How long a batch waits for more requests "
                               "after its first.", lower_bound=0.0)
_EXCLUDE = flags.DEFINE_bool("exclude_history", False, "Leave the history's items out of the results.")
_ACCESS_LOG = flags.DEFINE_bool("access_log", True, "Log every request (uvicorn's access log).")
_WARMUP = flags.DEFINE_bool("warmup", True, "Compile every batch shape before listening (else "
                            "each compiles on its first request).")

Key = Union[StrictStr, StrictInt]
POLL_S = 0.0005   # how often a gathering batch looks for more requests


class Request(BaseModel):
  model_config = ConfigDict(extra="forbid")
  user: Optional[Key] = None
  history: list[Key]
  k: Optional[StrictInt] = Field(None, ge=1)


class Batcher:
  """Gathers requests into device batches answered in one worker thread."""

  def __init__(self, answerer, max_batch: int, max_wait_s: float):
    self.answerer, self.max_batch, self.max_wait_s = answerer, max_batch, max_wait_s
    self.queue: Optional[asyncio.Queue] = None
    self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jaxrec-device")
    self.requests = self.batches = 0

  async def answer(self, request: dict, k: int) -> dict:
    future = asyncio.get_running_loop().create_future()
    await self.queue.put((request, k, future))
    return await future

  def _answer_batch(self, batch) -> list:
    by_k = {}
    for i, (request, k, _) in enumerate(batch):
      by_k.setdefault(k, []).append(i)
    out = [None] * len(batch)
    for k, rows in by_k.items():
      for i, a in zip(rows, self.answerer.answer([batch[i][0] for i in rows], k)):
        out[i] = a
    return out

  async def run(self):
    loop = asyncio.get_running_loop()
    while True:
      batch = [await self.queue.get()]
      deadline = loop.time() + self.max_wait_s
      # gathered by polling, never by wait_for(queue.get()): its cancellation at the
      # deadline can drop an item just taken (Python < 3.12), and that request never returns
      while len(batch) < self.max_batch:
        try:
          batch.append(self.queue.get_nowait())
          continue
        except asyncio.QueueEmpty:
          pass
        if loop.time() >= deadline:
          break
        await asyncio.sleep(min(POLL_S, deadline - loop.time()))
      try:
        answers = await loop.run_in_executor(self.pool, self._answer_batch, batch)
      except Exception as e:  # noqa: BLE001  (each waiting request gets the failure)
        for *_, future in batch:
          if not future.done():
            future.set_exception(e)
        continue
      self.requests += len(batch)
      self.batches += 1
      for (*_, future), a in zip(batch, answers):
        if not future.done():
          future.set_result(a)


def create_app(model: served.ExportedModel, k: int = 10, max_batch: int = 64,
               max_wait_ms: float = 5.0, exclude_history: bool = False) -> FastAPI:
  """The HTTP app of an exported model (see the module's docstring)."""
  answerer = served.answerer(model, k, exclude_history)
  batcher = Batcher(answerer, max_batch, max_wait_ms / 1000)
  k_max = model.manifest["k_max"]

  @contextlib.asynccontextmanager
  async def lifespan(app):
    batcher.queue = asyncio.Queue()
    worker = asyncio.create_task(batcher.run())
    yield
    worker.cancel()
    batcher.pool.shutdown(wait=False)

  app = FastAPI(title="jaxrec", lifespan=lifespan)

  @app.get("/healthz")
  async def healthz():
    m = model.manifest
    return {"status": "ok", "method": m["method"], "dataset": m["dataset"],
            "n_items": m["n_items"], "k_max": k_max, "requests": batcher.requests,
            "batches": batcher.batches}

  @app.post("/recommend")
  async def recommend(request: Request):
    if request.k is not None and request.k > k_max:
      raise HTTPException(422, f"k={request.k}: this export returns at most {k_max} items")
    return await batcher.answer({"user": request.user, "history": [str(h) for h in request.history]},
                                request.k or k)

  return app


def start(app: FastAPI, host: str = "127.0.0.1", port: int = 0):
  """Runs `app` with uvicorn in a daemon thread: (server, port); `server.should_exit = True`
  stops it. Port 0 takes a free one."""
  sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  sock.bind((host, port))
  server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
  threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
  deadline = time.time() + 60
  while not server.started:
    if time.time() > deadline:
      raise RuntimeError(f"the server on {host}:{port} did not start within 60 s")
    time.sleep(0.01)
  return server, sock.getsockname()[1]


def main(argv):
  del argv
  model = served.ExportedModel(_EXPORT.value)
  if _WARMUP.value:
    print(f"compiled in {model.warmup(_MAX_BATCH.value):.1f}s", flush=True)
  app = create_app(model, _K.value, _MAX_BATCH.value, _MAX_WAIT.value, _EXCLUDE.value)
  uvicorn.run(app, host=_HOST.value, port=_PORT.value, access_log=_ACCESS_LOG.value)


if __name__ == "__main__":
  cli.run(main)
