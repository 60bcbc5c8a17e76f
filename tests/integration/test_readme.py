"""The Python examples of the README and the docs run as written (docs that match behaviour)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [(path.relative_to(ROOT).as_posix(), i, block) for path in DOCUMENTS
          for i, block in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), re.S))]


@pytest.mark.parametrize("name,index,block", BLOCKS, ids=[f"{name}-block{i}" for name, i, _ in BLOCKS])
def test_example_runs(name, index, block):
    exec(compile(block, name, "exec"), {})
