"""The README's Quickstart commands run as written (dry-run where they would install or run everything), and no
file in the repository points at a path outside it."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def quickstart_commands() -> list[list[str]]:
    section = README[README.index("## Quickstart") : README.index("\n## ", README.index("## Quickstart") + 5)]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [[shlex.split(part) for part in block.strip().split(" && ")] for block in blocks]


def checked(argv: list[str]) -> list[str]:
    """The command as the test runs it: installs dry-run, the suite collected only (the demo: see below)."""
    if argv[:4] == ["python", "-m", "pip", "install"]:
        extra = ["--dry-run"] + (["--no-build-isolation", "--no-deps"] if "-e" in argv else [])
        return [sys.executable, *argv[1:], *extra]
    if argv[:3] == ["python", "-m", "pytest"]:
        return [sys.executable, "-m", "pytest", "--collect-only", "-q", *argv[3:]]
    raise AssertionError(f"README command not covered by this test: {shlex.join(argv)}")


def test_quickstart_has_the_demo_and_the_tests():
    flat = [shlex.join(c) for block in quickstart_commands() for c in block]
    assert "stitch demo" in flat and "python -m pytest" in flat and flat.count("python -m pip install torch==2.13.0") == 2


def command_env() -> dict[str, str]:
    """The environment the commands run in (from ROOT): this checkout importable, pip quiet about its version."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.mark.parametrize("block", range(2))
def test_quickstart_commands_run(block, demo_run, readme_runs):
    for i, argv in enumerate(quickstart_commands()[block]):
        if argv[:2] == ["stitch", "demo"]:
            # `stitch demo` is run once per session (tests/conftest.py: the console script when installed,
            # else `python -m stitch.cli`) with --quick, --no-progress, --cache-dir and --out after the README's
            # own arguments, and shared with tests/test_cli.py; the installs above it are dry runs, which change
            # nothing it depends on
            assert demo_run.args[: len(argv) - 1] == argv[1:], (demo_run.args, argv)
            added = [a for a in demo_run.args[len(argv) - 1 :] if a.startswith("--")]
            assert added == ["--quick", "--no-progress", "--cache-dir", "--out"], demo_run.args
            done = demo_run.done
        else:  # checked(argv) in ROOT with command_env(), run in the background (tests/conftest.py)
            done = readme_runs(block, i)
            assert done.args == checked(argv)
        if done.returncode and "pip" in argv and re.search(r"connection|resolve|network", done.stderr, re.I):
            pytest.skip("the package index is unreachable")
        assert done.returncode == 0, f"{shlex.join(argv)}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    if block == 0:
        assert (demo_run.out / "report.html").is_file()


OUTSIDE = re.compile(r"\.\./shared|/work/|DESIGN\.md|ARCHITECTURE\.md|/root/|/home/\w+")


def test_no_file_points_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    files = files or [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts]
    bad = []
    for name in files + [str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")]:
        path = ROOT / name
        if path.suffix in {".png", ".safetensors"} or not path.is_file() or name == "tests/test_readme.py":
            continue
        text = path.read_text(encoding="utf-8", errors="ignore")
        bad += [f"{name}: {m.group(0)}" for m in OUTSIDE.finditer(text)]
        for link in re.findall(r"\]\(([^)#]+)\)", text) if path.suffix == ".md" else []:
            if not link.startswith(("http://", "https://")) and not (path.parent / link).resolve().is_relative_to(ROOT):
                bad.append(f"{name}: link {link}")
    assert bad == []
