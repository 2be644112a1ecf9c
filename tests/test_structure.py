"""The shape of the house (ARCHITECTURE.md): dependencies point one way, `import jaxtok` and
`jaxtok.load` never import the trainers, files stay under 400 lines and function bodies under
60."""

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).parent.parent / "jaxtok"
# Each floor of jaxtok and the floors it may import (besides itself).
ALLOWED = {
    "kernels": set(),
    "quantizers": {"kernels"},
    "layers": {"kernels"},
    "losses": {"models"},  # the perceptual loss runs LPIPS
    "models": {"kernels", "quantizers", "layers"},
    "build": {"models", "quantizers"},
    "data": set(),
    "weights": set(),  # other frameworks' checkpoint files, read without them
    "eval": {"build", "data", "inference", "models", "quantizers", "weights"},
    "convert": {"build", "data", "inference", "models", "quantizers", "weights"},
    "inference": {"build", "data", "models", "quantizers"},
    "configs": set(),
    "config": set(),
    "train": {"build", "data", "eval", "inference", "losses", "models", "quantizers", "kernels",
              "config"},
    "demo": {"config", "configs", "data", "eval", "inference", "train"},
    "cli": {"cli_eval", "config", "convert", "data", "demo", "eval", "inference", "models",
            "train"},
    "cli_eval": {"data", "eval"},
}


def _modules():
  for path in sorted(PACKAGE.rglob("*.py")):
    yield path, path.relative_to(PACKAGE.parent).with_suffix("").parts


def _floor(parts: tuple[str, ...]) -> str:
  return parts[1] if len(parts) > 1 else ""


def _imports(tree: ast.AST):
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module == "jaxtok":
        yield from (f"jaxtok.{alias.name}" for alias in node.names)
      else:
        yield node.module


def test_dependencies_point_one_way():
  wrong = []
  for path, parts in _modules():
    if parts[-1] == "__init__" and len(parts) == 2:
      continue  # jaxtok/__init__.py: checked by the subprocess test below
    floor = _floor(parts)
    assert floor in ALLOWED, f"{path}: floor {floor!r} missing from the table"
    for name in _imports(ast.parse(path.read_text())):
      target = name.split(".")
      if target[0] != "jaxtok" or len(target) < 2 or target[1] == floor:
        continue
      if target[1] not in ALLOWED[floor]:
        wrong.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
  assert not wrong, "\n".join(wrong)


def test_import_and_load_never_import_the_trainers(tmp_path):
  code = ("import sys, jaxtok\n"
          "try:\n  jaxtok.load(sys.argv[1])\nexcept FileNotFoundError:\n  pass\n"
          "import jaxtok.inference\n"
          "print(sorted(m for m in sys.modules if m.startswith('jaxtok.train')))")
  out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                       text=True, check=True).stdout
  assert out.strip() == "[]", out


@pytest.mark.parametrize("limit", [400])
def test_files_stay_small(limit):
  long = [f"{p.relative_to(PACKAGE.parent)}: {n}" for p, _ in _modules()
          if (n := len(p.read_text().splitlines())) > limit]
  assert not long, long


def test_functions_stay_short():
  long = []
  for path, _ in _modules():
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        body = node.body[1:] if ast.get_docstring(node) and len(node.body) > 1 else node.body
        length = node.end_lineno - body[0].lineno + 1  # the code, signature and docstring aside
        if length > 60:
          long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} {length}")
  assert not long, "\n".join(long)


def test_test_files_have_unique_names():
  """tests/ has no packages: pytest imports test files by basename, and two with one name
  stop the whole suite's collection ("import file mismatch")."""
  names: dict[str, list[str]] = {}
  for path in sorted(PACKAGE.parent.joinpath("tests").rglob("test_*.py")):
    names.setdefault(path.name, []).append(str(path.relative_to(PACKAGE.parent)))
  assert not {n: p for n, p in names.items() if len(p) > 1}
