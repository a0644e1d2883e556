"""`python -m jaxrec.recommend --workdir W --input histories.jsonl --k 10 --out recs.jsonl`:
what each user should see next, from a run's best checkpoint, in the data set's own keys.

Input, one JSON object a line (`-`: standard input): {"user": "A1B2", "history": ["B00X",
"B00Q"]} (items oldest first; "user" optional). Output, one line per input line, in input
order (standard output without --out): {"user", "items": [keys], "scores": [...], "ids":
[[codes], ...]} ("ids" for methods over semantic IDs); "unknown": the history's items the
data set does not have (left out); "fallback": "most_popular" when nothing of the history
is known (scores are then training counts). Lines are answered in batches on device and
each batch is written before the next is read: a malformed line is one error naming it,
after every line before it has been written.
"""
import json
import os
import sys

from absl import flags

from jaxrec import cli
from jaxrec.errors import ConfigError, DataError
from jaxrec.fingerprint import fingerprint
from jaxrec.pipeline import item_keys, load_run
from jaxrec.training.evaluation import most_popular, recommend_histories

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by jaxrec.train.", required=True)
_INPUT = flags.DEFINE_string("input", "-", "JSON lines of {user, history} ('-': stdin).")
_OUT = flags.DEFINE_string("out", "", "Output JSON lines (default: stdout).")
_K = flags.DEFINE_integer("k", 10, "Items per user (at most train.beam for semantic IDs).", lower_bound=1)
_EXCLUDE = flags.DEFINE_bool("exclude_history", False, "Leave the history's items out of the "
                             "results (the evaluation protocol does not).")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Users per device batch.", lower_bound=1)
cli.define_distributed_flags()


def parse(line: str, where: str, number: int) -> dict:
  """One request; a DataError naming the line for anything else."""
  try:
    req = json.loads(line)
  except json.JSONDecodeError as e:
    raise DataError(where, f"line {number}", f"not JSON ({e.msg} at column {e.colno})") from e
  if not isinstance(req, dict):
    raise DataError(where, f"line {number}", "expected an object {\"user\": ..., \"history\": [...]}")
  unknown = set(req) - {"user", "history"}
  if unknown:
    raise DataError(where, f"line {number}", f"unknown field(s) {sorted(unknown)}: expected "
                    "\"user\" and \"history\"")
  history = req.get("history")
  if not isinstance(history, list) or not all(isinstance(h, (str, int)) for h in history):
    raise DataError(where, f"line {number}", "\"history\" must be a list of item keys")
  return {"user": req.get("user"), "history": [str(h) for h in history]}


class Recommender:
  """A run's best checkpoint answering requests in the data set's keys."""

  def __init__(self, workdir: str, k: int, exclude_history: bool, batch_size: int):
    self.run, self.params, _ = load_run(workdir)
    ds = self.run.dataset
    self.keys = item_keys(ds)
    self.item_of = {key: i for i, key in enumerate(self.keys)}
    users = ds.user_keys if ds.user_keys is not None else range(ds.n_users)   # rows as keys
    self.user_of = {str(u): i for i, u in enumerate(users)}
    self.popular, self.counts = most_popular(self.run)
    self.k, self.exclude, self.batch_size = k, exclude_history, batch_size
    beam = self.run.cfg.train.beam if self.run.codes is not None else ds.n_items
    if k > beam:
      raise ConfigError(f"--k={k}: the run's beam (train.beam={beam}) returns at most {beam} "
                        "items per user")
    self.ask = min(beam, ds.n_items)      # asked of the model: k, and more to exclude from

  def user_row(self, user) -> int:
    """The user's row (its user-token bucket), or a stable number for a new user."""
    if user is None:
      return 0
    return self.user_of.get(str(user), int(fingerprint(str(user))[:8], 16))

  def answer(self, requests: list) -> list:
    known = [[self.item_of[h] for h in r["history"] if h in self.item_of] for r in requests]
    asked = [i for i, h in enumerate(known) if h]
    out = [{"user": r["user"]} for r in requests]
    if asked:
      want = min(self.ask, self.k + (max(len(known[i]) for i in asked) if self.exclude else 0))
      items, scores, ids = recommend_histories(
          self.run, self.params, [known[i] for i in asked],
          [self.user_row(requests[i]["user"]) for i in asked], want, self.batch_size)
      for row, i in enumerate(asked):
        keep = [j for j in range(want) if items[row, j] >= 0 and not (
            self.exclude and items[row, j] in known[i])][:self.k]
        out[i].update(items=[self.keys[items[row, j]] for j in keep],
                      scores=[round(float(scores[row, j]), 6) for j in keep])
        if ids is not None:
          out[i]["ids"] = [[int(c) for c in ids[row, j]] for j in keep]
    for i, r in enumerate(requests):
      unknown = [h for h in r["history"] if h not in self.item_of]
      if unknown:
        out[i]["unknown"] = unknown
      if not known[i]:                  # nothing known to exclude either
        out[i].update(items=[self.keys[j] for j in self.popular[:self.k]],
                      scores=[int(c) for c in self.counts[:self.k]], fallback="most_popular")
    return out


def main(argv):
  del argv
  rec = Recommender(_WORKDIR.value, _K.value, _EXCLUDE.value, _BATCH.value)
  where = "standard input" if _INPUT.value == "-" else _INPUT.value
  if _INPUT.value != "-" and not os.path.isfile(_INPUT.value):
    raise DataError(_INPUT.value, None, "file not found")
  src = sys.stdin if _INPUT.value == "-" else open(_INPUT.value)
  dst = open(_OUT.value, "w") if _OUT.value else sys.stdout
  pending, n = [], 0

  def flush():
    for line in rec.answer(pending):
      dst.write(json.dumps(line) + "\n")
    dst.flush()
    pending.clear()

  try:
    for n, line in enumerate(src, 1):
      if not line.strip():
        continue
      try:
        pending.append(parse(line, where, n))
      except DataError:
        flush()                           # every line before the bad one is written
        raise
      if len(pending) == _BATCH.value:
        flush()
    if pending:
      flush()
  finally:
    for f in (src, dst):
      if f not in (sys.stdin, sys.stdout):
        f.close()
  if _OUT.value:
    print(f"{n} lines answered: {_OUT.value}", file=sys.stderr)


if __name__ == "__main__":
  cli.run(main)
