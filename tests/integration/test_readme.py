"""The Python examples of the README and the docs run as written (docs that match behaviour)."""

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [(path.relative_to(ROOT).as_posix(), i, block) for path in DOCUMENTS
          for i, block in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), re.S))]


@pytest.mark.parametrize("name,index,block", BLOCKS, ids=[f"{name}-block{i}" for name, i, _ in BLOCKS])
def test_example_runs(name, index, block):
    exec(compile(block, name, "exec"), {})


README = (ROOT / "README.md").read_text()
SHELL_LINES = [line.strip() for block in re.findall(r"```bash\n(.*?)```", README, re.S) for line in block.splitlines() if line.strip()]


def _extras() -> set[str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def test_install_commands_install_from_the_clone_with_extras_that_exist():
    """The package is not on PyPI: every ``pip install`` of it names the clone (``.``), with extras pyproject.toml defines."""
    installs = [shlex.split(line.split("#")[0]) for line in SHELL_LINES if line.startswith("pip install")]
    assert installs, "the README gives no install command"
    extras = _extras()
    for args in installs:
        target = args[2]
        named = re.fullmatch(r"\.(?:\[([a-z,]+)\])?", target)
        assert named, f"{' '.join(args)}: not an install from the clone"
        assert set((named.group(1) or "").split(",")) - {""} <= extras, (target, extras)
    assert "pip install ifsq-quant" not in README and '"ifsq-quant[' not in README
    assert "`examples` extra" in README or "examples extra" in README  # what python -m examples.* needs


def test_the_two_commands_come_right_after_the_quickstart():
    sections = re.split(r"^## ", README, flags=re.M)
    titles = [s.split("\n", 1)[0] for s in sections[1:]]
    assert titles[:3] == ["Install", "Quickstart", "The demo and the tests, from a clone"]
    block = re.search(r"```bash\n(.*?)```", sections[3], re.S).group(1)
    assert [line.split("#")[0].strip() for line in block.splitlines()] == ["bash dev.sh demo", "bash dev.sh test"]


@pytest.mark.skipif(not (ROOT / "dev.sh").is_file(), reason="dev.sh is in the repository, not in the sdist")
def test_the_demo_writes_where_the_readme_says():
    dev = (ROOT / "dev.sh").read_text()
    assert "-m examples.end_to_end --preset quick --out runs/quick" in dev
    assert "`python -m examples.end_to_end --preset quick --out runs/quick`" in README and "It writes `runs/quick/`" in README
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("bash dev.sh test")


@pytest.mark.skipif(not (ROOT / "examples" / "results" / "quick" / "metrics.json").is_file(),
                    reason="the committed demo run is in the repository, not in the sdist")
def test_the_demo_numbers_are_the_committed_run():
    """The README's figures for the demo are those of examples/results/quick/metrics.json, rounded as printed."""
    metrics = json.loads((ROOT / "examples" / "results" / "quick" / "metrics.json").read_text())
    psnr = {k: f"{v['psnr']:.2f}" for k, v in metrics["tokenizers"].items()}
    base, random_fd = metrics["baselines"], metrics["baselines"]["fd_random_tokens"]
    stated = " ".join(README.split())
    assert f"validation PSNR {psnr['fsq']} dB (FSQ) and {psnr['ifsq']} dB (iFSQ)" in stated
    assert (f"{metrics['ar']['fd']:.1f} for the AR transformer and {metrics['diffusion']['fd']:.1f} for the DiT, against "
            f"{base['fd_real']:.1f} for real validation images and {random_fd:,.0f} for decoded uniformly random tokens") in stated
    assert f"real images {base['fd_real']:.1f} in the repository's run" in stated
    assert f"agree for real images ({base['fd_real'] / random_fd:.3f} and" in stated
    assert f"the DiT ({metrics['diffusion']['fd'] / random_fd:.3f} and" in stated
    assert f"the AR transformer's varies most ({metrics['ar']['fd'] / random_fd:.3f} and" in stated
