"""The library's layers (BUILD_NOTES, Architecture): every module's top-level imports go to
its own layer or one below, and no import cycle exists once a package's ``__init__``
counts (importing ``fusion_jax.models.layers`` runs ``fusion_jax/models/__init__.py``)."""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fusion_jax")

# top-level module or package of fusion_jax → its layer (0 = base); a new module goes here
LAYERS = {
    **dict.fromkeys(("errors", "schema", "io_utils", "metrics", "dropout"), 0),
    "data": 1,
    "encoders": 2,   # pretrained networks from snapshots, below the extraction code
    "features": 3,
    "models": 4,
    **dict.fromkeys(("steps", "optim", "ledger", "passes", "sharding"), 5),
    **dict.fromkeys(("runs", "checkpoint", "configs"), 6),
    **dict.fromkeys(("experiment", "loop", "hooks"), 7),
    **dict.fromkeys(("training", "evaluation", "analysis", "benchmark", "recipes", "predict",
                     "reports", "html_report", "plots", "pretrained", "sweeps"), 8),
    "cli": 9,
}


def _modules():
  mods = {}
  for d, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(d, f), os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
        mods[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(d, f)
  return mods


def _imports(name, path, mods):
  """The fusion_jax modules ``name`` imports at its top level, with the packages that
  importing them initialises."""
  out = set()
  package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
  for node in ast.parse(open(path, encoding="utf-8").read()).body:
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                 for a in node.names]
    else:
      continue
    for t in targets:
      parts = t.split(".")
      for i in range(2, len(parts) + 1):
        m = ".".join(parts[:i])
        if m in mods and m != name and not name.startswith(m + "."):
          out.add(m)
  return out


MODS = _modules()
GRAPH = {m: _imports(m, p, MODS) for m, p in MODS.items()}


def _layer(module):
  top = module.split(".")[1] if "." in module else None
  return LAYERS.get(top)


def test_every_module_has_a_layer_and_imports_only_its_own_or_lower():
  unplaced = sorted(m for m in MODS if m != "fusion_jax" and _layer(m) is None)
  assert not unplaced, f"give these a layer in LAYERS (and BUILD_NOTES): {unplaced}"
  upward = sorted(f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
                  for m, targets in GRAPH.items() if m != "fusion_jax"
                  for t in targets if _layer(t) > _layer(m))
  assert not upward, "\n".join(upward)


def test_no_import_cycle():
  state, path = {}, []

  def visit(m):
    state[m] = "open"
    path.append(m)
    for t in sorted(GRAPH[m]):
      if state.get(t) == "open":
        pytest.fail("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
      if t not in state:
        visit(t)
    path.pop()
    state[m] = "done"

  for m in sorted(GRAPH):
    if m not in state:
      visit(m)
  assert len(state) == len(MODS) > 50
