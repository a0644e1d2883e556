"""`python -m jaxrec.recommend --workdir W --input histories.jsonl --k 10 --out recs.jsonl`:
what each user should see next, from a run's best checkpoint, in the data set's own keys.

Input, one JSON object a line (`-`: standard input): {"user": "A1B2", "history": ["B00X",
"B00Q"]} (items oldest first; "user" optional). Output, one line per input line, in input
order (standard output without --out): {"user", "items": [keys], "scores": [...], "ids":
[[codes], ...]} ("ids" for methods over semantic IDs); "unknown" and "fallback" as
`jaxrec.answer` writes them. Lines are answered in batches on device and
each batch is written before the next is read: a malformed line is one error naming it,
after every line before it has been written.
"""
import json
import os
import sys

from absl import flags

from jaxrec import cli
from jaxrec.answer import parse
from jaxrec.errors import DataError
from jaxrec.pipeline import recommender

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by jaxrec.train.", required=True)
_INPUT = flags.DEFINE_string("input", "-", "JSON lines of {user, history} ('-': stdin).")
_OUT = flags.DEFINE_string("out", "", "Output JSON lines (default: stdout).")
_K = flags.DEFINE_integer("k", 10, "Items per user (at most train.beam for semantic IDs).", lower_bound=1)
_EXCLUDE = flags.DEFINE_bool("exclude_history", False, "Leave the history's items out of the "
                             "results (the evaluation protocol does not).")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Users per device batch.", lower_bound=1)
cli.define_distributed_flags()


def main(argv):
  del argv
  rec = recommender(_WORKDIR.value, _K.value, _EXCLUDE.value, _BATCH.value)
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
