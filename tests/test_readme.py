"""The README's Quickstart is what CI runs: keep the two from drifting apart."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def test_quickstart_has_exactly_two_commands():
    commands = quickstart_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)
    assert all(c.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0") for c in commands)


def test_ci_runs_the_readme_install_and_test_steps():
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = quickstart_commands()[1]
    steps = test_command.split(" && ")[2:]  # after creating and activating the venv
    install = " && ".join(s for s in steps if s.startswith("pip "))
    tests = [s for s in steps if not s.startswith("pip ")]
    assert install in ci
    assert tests and all(t in ci for t in tests)
