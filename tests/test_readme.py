"""The README's Python examples run as written, in order, in one namespace."""

import pathlib
import re

README = pathlib.Path(__file__).parent.parent / "README.md"


def python_blocks() -> list[str]:
  return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples_and_no_placeholders():
  text = README.read_text()
  assert len(python_blocks()) >= 8
  assert "make demo" in text and "make test" in text
  assert not re.search(r"\b(TODO|TBD|DEMO_[A-Z]+)\b", text)


def test_readme_examples_run():
  namespace: dict = {}
  for i, block in enumerate(python_blocks()):
    try:
      exec(compile(block, f"README.md python block {i}", "exec"), namespace)
    except Exception as e:
      raise AssertionError(f"README python block {i} failed:\n{block}") from e
