"""The house's layers (ARCHITECTURE.md): every import of a jaxrec module points down, no
module cycle, imports inside functions only where listed; and a method defined outside
jaxrec plugs in through the registry and trains without a change to any other file."""
import ast
import functools
import json
import os

import pytest

import tiger
from jaxrec import pipeline
from jaxrec.methods import Method, get_method, register
from jaxrec.methods.base import init_t5
from jaxrec.recommender import steps
from jaxrec.training.plan import single_stage_plan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Top to bottom. A module may import any module of a lower layer, and within its own layer
# only modules of its own unit (a unit is one entry of the list: the ground floor is one).
LAYERS = [
    ("entry points", ["jaxrec.train", "jaxrec.evaluate", "jaxrec.recommend", "jaxrec.tokenize",
                      "jaxrec.embed", "jaxrec.data.__main__", "jaxrec.trainer",
                      "jaxrec.export", "jaxrec.serve"]),
    ("command line", ["jaxrec.cli"]),
    ("pipeline", ["jaxrec.pipeline"]),
    ("methods", ["jaxrec.methods"]),
    ("training library", ["jaxrec.training"]),
    ("models", ["jaxrec.recommender", "jaxrec.tokenizer", "jaxrec.text"]),
    # the export loader reads only the ground floor: it serves without training code
    ("decoding, data, the export loader", ["jaxrec.decode", "jaxrec.data", "jaxrec.served"]),
    ("ground floor", [("jaxrec", "jaxrec.metrics", "jaxrec.optim", "jaxrec.distributed",
                       "jaxrec.checkpoint", "jaxrec.config", "jaxrec.errors", "jaxrec.xla",
                       "jaxrec.fingerprint", "jaxrec.report", "jaxrec.cache", "jaxrec.answer")]),
]

# Imports of jaxrec modules inside functions: (importer, imported) -> why it cannot be at the top.
INNER_IMPORTS = {}


def _unit_of(module):
  """(layer index, unit) of a module: the longest matching prefix of LAYERS."""
  best = None
  for depth, (_, units) in enumerate(LAYERS):
    for unit in units:
      names = unit if isinstance(unit, tuple) else (unit,)
      for name in names:
        if module == name or module.startswith(name + "."):
          if best is None or len(name) > best[2]:
            best = (depth, unit, len(name))
  if best is None:
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py: add it")
  return best[:2]


def module_imports(root):
  """{module: [(imported module, line, at top level)]} for every module under root/jaxrec."""
  modules, out = {}, {}
  for folder, _, files in os.walk(os.path.join(root, "jaxrec")):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(folder, f)
        name = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
        modules[name.removesuffix(".__init__")] = path
  for name, path in modules.items():
    tree = ast.parse(open(path).read(), path)
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                   else node.module for a in node.names]
      else:
        continue
      for t in targets:
        if t.split(".")[0] == "jaxrec":
          found.append((t, node.lineno, id(node) in top))
    out[name] = found
  return out


def violations(graph):
  """Upward or sideways imports, unlisted inner imports and cycles, one line each."""
  problems = []
  for module, imports in graph.items():
    depth, unit = _unit_of(module)
    for target, line, at_top in imports:
      t_depth, t_unit = _unit_of(target)
      if t_depth < depth or (t_depth == depth and t_unit != unit):
        problems.append(f"{module}:{line} imports {target} ({LAYERS[t_depth][0]}) from the "
                        f"{LAYERS[depth][0]} layer")
      if not at_top and (module, target) not in INNER_IMPORTS:
        problems.append(f"{module}:{line} imports {target} inside a function (not listed)")
  edges = {m: {t for t, _, _ in imps if t in graph and t != m} for m, imps in graph.items()}
  state = {}

  def visit(m, path):
    state[m] = 1
    for t in sorted(edges[m]):
      if state.get(t) == 1:
        problems.append("cycle: " + " -> ".join(path[path.index(t):] + [t]))
      elif t not in state:
        visit(t, path + [t])
    state[m] = 2

  for m in sorted(edges):
    if m not in state:
      visit(m, [m])
  return problems


def test_every_import_points_down_and_no_cycle():
  problems = violations(module_imports(REPO))
  assert not problems, "\n".join(problems)


def test_the_checker_finds_upward_imports_cycles_and_inner_imports():
  graph = {"jaxrec.decode": [("jaxrec.methods.base", 3, True)],
           "jaxrec.methods.base": [("jaxrec.decode", 5, True)],
           "jaxrec.recommender.t5": [("jaxrec.tokenizer.rq", 7, True)],
           "jaxrec.training.loop": [("jaxrec.metrics", 9, False)]}
  text = "\n".join(violations(graph))
  assert "jaxrec.decode:3 imports jaxrec.methods.base (methods)" in text
  assert "cycle: jaxrec.decode -> jaxrec.methods.base -> jaxrec.decode" in text
  assert "jaxrec.recommender.t5:7 imports jaxrec.tokenizer.rq" in text   # peers stay apart
  assert "jaxrec.training.loop:9 imports jaxrec.metrics inside a function" in text


class Toy(Method):
  """A method written outside jaxrec: TIGER's model, a code loss at temperature 2, and a
  marker in its step's metrics that shows its plan is the one that ran."""
  name = "toy_test_method"

  def training_plan(self, run, key, steps_per_epoch):
    def make_step(tx):
      step = functools.partial(steps.train_step, model=run.model, tx=tx, tau=2.0)

      def toy_step(state, batch, codes, k):
        state, out = step(state, batch, codes, k)
        return state, {**out, "toy_marker": out["loss"] * 0 + 7.0}
      return toy_step
    return single_stage_plan(run, init_t5(run, key), make_step, steps_per_epoch)


def test_a_method_defined_in_a_test_plugs_in_and_trains(tmp_path):
  register(Toy())
  assert get_method("toy_test_method").kind == "codes"
  cfg = tiger.get_config("tiny")
  cfg.method = "toy_test_method"
  cfg.train.max_steps = 6
  res = pipeline.train_and_evaluate(cfg, str(tmp_path), log=lambda m: None)
  assert res["method"] == "toy_test_method" and 0.0 <= res["test"]["recall@10"] <= 1.0
  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert any(r.get("toy_marker") == 7.0 for r in records), records


def test_unknown_method_names_the_registered_ones():
  with pytest.raises(ValueError, match="unknown method 'nope'.*tiger"):
    get_method("nope")
