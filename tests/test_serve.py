"""An exported recommender (`jaxrec.export`) answers as the run does in process, loaded by
`jaxrec.served` without any training code; `jaxrec.serve` answers it over real HTTP, batching
concurrent requests, and turns bad requests into 4xx with the reason."""
import concurrent.futures
import json
import os
import subprocess
import sys

import chex
import httpx
import numpy as np
import pytest

from jaxrec import export, pipeline, serve, served
from jaxrec.errors import ConfigError
from jaxrec.training.evaluation import recommend_histories

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
  """{name: export folder} of the session's tiny TIGER (its decoder-only and "items" head
  variants too) and SASRec runs."""
  root = tmp_path_factory.mktemp("exports")
  return {name: (export.export_run(workdir, str(root / name)), str(root / name))[1]
          for name, workdir in ((n, trained[n]) for n in ("tiger", "decoder", "items", "sasrec"))}


def requests_of(run, users=range(7)):
  ds = run.dataset
  out = [{"user": str(u), "history": [str(i) for i in ds.items_I[ds.offsets_U1[u]:ds.offsets_U1[u + 1]]]}
         for u in users]
  out[1]["history"].append("not-an-item")                     # reported, left out
  out.append({"user": "somebody new", "history": ["nothing known"]})   # most-popular
  out.append({"user": None, "history": out[0]["history"][:1]})
  return out


def assert_same_answers(got, want):
  """Equal answers; scores to float32 precision (batches of other shapes may round apart)."""
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert {k: v for k, v in g.items() if k != "scores"} == {k: v for k, v in w.items() if k != "scores"}
    chex.assert_trees_all_close(np.asarray(g["scores"], float), np.asarray(w["scores"], float),
                                rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["tiger", "decoder", "items", "sasrec"])
def test_exported_model_recommends_what_the_run_does(trained, exported, name):
  run, params, _ = pipeline.load_run(trained[name])
  model = served.ExportedModel(exported[name])
  ds = run.dataset
  histories = [ds.items_I[ds.offsets_U1[u]:ds.offsets_U1[u + 1]] for u in range(7)]
  k = 10
  items, scores, ids = model.rank(histories, list(range(7)), k, batch_size=4)   # 4 + 3 -> 4
  want_items, want_scores, want_ids = recommend_histories(run, params, histories, list(range(7)),
                                                          k, batch_size=4)
  np.testing.assert_array_equal(items, want_items)
  chex.assert_trees_all_close(scores, want_scores, rtol=1e-6, atol=1e-6)
  if name != "sasrec":
    np.testing.assert_array_equal(ids, want_ids)
  else:
    assert ids is None and want_ids is None
  # in keys, with unknown items, a fallback and exclusion: the same answers as jaxrec.recommend
  reqs = requests_of(run)
  for exclude in (False, True):
    got = served.load(exported[name], k=5, exclude_history=exclude).answer(reqs)
    assert_same_answers(got, pipeline.recommender(trained[name], 5, exclude, 256).answer(reqs))
  assert got[1]["unknown"] == ["not-an-item"] and got[7]["fallback"] == "most_popular"
  assert not set(got[0]["items"]) & set(reqs[0]["history"])            # excluded


def test_export_folder_layout_and_refusals(trained, exported, tmp_path):
  manifest = json.load(open(os.path.join(exported["tiger"], served.MANIFEST)))
  run, _, _ = pipeline.load_run(trained["tiger"])
  assert manifest["format"] == served.FORMAT and manifest["k_max"] == run.cfg.train.beam
  assert manifest["buckets"] == list(run.buckets) and manifest["codes"] in manifest["leaves"]
  for length in manifest["buckets"]:
    assert os.path.isfile(os.path.join(exported["tiger"], served.program_file(length)))
  with pytest.raises(ConfigError, match="never overwritten"):
    export.export_run(trained["tiger"], exported["tiger"])
  with pytest.raises(ConfigError, match="at most"):
    export.export_run(trained["tiger"], str(tmp_path / "wide"), k_max=run.cfg.train.beam + 1)
  assert not os.path.exists(tmp_path / "wide")
  with pytest.raises(ConfigError, match="at most"):
    served.load(exported["tiger"], k=run.cfg.train.beam + 1)
  bad = tmp_path / "not-an-export"
  bad.mkdir()
  with pytest.raises(Exception, match="manifest.json: not found"):
    served.ExportedModel(str(bad))


def test_the_loader_imports_no_training_code(trained, exported):
  """A process that loads the export and answers imports jax, numpy and safetensors, and of
  jaxrec only the loader and what it reads requests with."""
  code = ("import json, sys\nfrom jaxrec import served\n"
          f"rec = served.load({exported['tiger']!r})\n"
          "out = rec.answer([{'user': '0', 'history': ['1', '2']}])\n"
          "mods = sorted(m for m in sys.modules if m.split('.')[0] in "
          "('jaxrec', 'flax', 'optax', 'orbax', 'grain', 'ml_collections', 'chex'))\n"
          "print(json.dumps({'out': out, 'modules': mods}))")
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                        cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["modules"] == ["jaxrec", "jaxrec.answer", "jaxrec.errors", "jaxrec.fingerprint",
                               "jaxrec.served"]
  assert_same_answers(result["out"], pipeline.recommender(trained["tiger"], 10, False, 256).answer(
      [{"user": "0", "history": ["1", "2"]}]))


def test_server_answers_over_http_batches_and_rejects_bad_requests(trained, exported):
  model = served.ExportedModel(exported["tiger"])
  app = serve.create_app(model, k=5, max_batch=16, max_wait_ms=50)
  server, port = serve.start(app)
  try:
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["method"] == "tiger" and health["requests"] == 0
    run, _, _ = pipeline.load_run(trained["tiger"])
    reqs = requests_of(run, range(24))
    want = served.answerer(model, 5).answer(reqs)
    got = client.post("/recommend", json=reqs[0])
    assert got.status_code == 200
    assert_same_answers([got.json()], want[:1])
    assert client.post("/recommend", json=dict(reqs[0], k=3)).json()["items"] == want[0]["items"][:3]
    # concurrent clients: every answer right, and fewer device batches than requests
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
      answers = list(pool.map(lambda r: client.post("/recommend", json=r).json(), reqs))
    assert_same_answers(answers, want)
    health = client.get("/healthz").json()
    assert health["requests"] == 2 + len(reqs) and health["batches"] < health["requests"]
    # many clients at once, each on its own connection: none of the requests is lost in
    # the gathering (a wait_for(queue.get()) cancelled at the deadline once dropped one)
    many = reqs * 4

    def own_client(chunk):
      with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
        return [c.post("/recommend", json=r).json() for r in chunk]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
      parts = list(pool.map(own_client, [many[i::32] for i in range(32)]))
    assert sum(len(p) for p in parts) == len(many)
    for i, part in enumerate(parts):
      assert_same_answers(part, [want[j % len(reqs)] for j in range(i, len(many), 32)])
    # bad requests: 4xx with the reason, and the server still answers afterwards
    for body, reason in (('{"history": ["1"', "JSON decode error"),
                         ('{"history": ["1"], "items": 3}', "extra"),
                         ('{"history": "1"}', "list"),
                         ('{"user": [1], "history": ["1"]}', "user"),
                         ('{"history": ["1"], "k": 0}', "greater than or equal"),
                         ('{"history": ["1"], "k": 999}', "at most"),
                         ('[1, 2]', "dictionary")):
      r = client.post("/recommend", content=body, headers={"content-type": "application/json"})
      assert r.status_code == 422, (body, r.status_code, r.text)
      assert reason in r.text, (body, r.text)
    assert_same_answers([client.post("/recommend", json=reqs[3]).json()], want[3:4])
  finally:
    server.should_exit = True
