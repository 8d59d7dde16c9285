"""The docs are examples that work: every command line in README.md, docs/*.md and `--help`.

- A command in a fenced code block or a `--help` example is parsed by the real parser (options and
  positional arguments in any order), and the config its arguments make is built and checked
  (every KEY=VALUE names a real field, every recipe and model preset exists) without running it.
- A command mentioned in running text (`slimasr prune --latency-table`) or in a command table
  names a real verb and real options; its KEY=VALUE settings are checked on the verb's example.
- Every `recipes/...` path and relative link in the docs exists; so does every path `--help` names.
- The README's Quickstart is what CI runs: the two are kept from drifting apart.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from slimasr import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
SPAN = re.compile(r"`([^`]+)`")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
SETTING = re.compile(r"(?<![\w.=/-])[a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*=(?:\[[^\]]*\]|[^\s,;)]+)")
RECIPE_PATH = re.compile(r"recipes/[\w*./-]*[\w*/]")
LINK = re.compile(r"\]\(([^)#\s]+)")


@dataclass(frozen=True)
class Example:
    where: str  # "README.md:117" or "slimasr train --help"
    text: str  # "slimasr train --config ..." (a full command) or a mention ("slimasr prune")

    def __str__(self) -> str:
        return self.where


def verb_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict:
    """``{("corpus", "synth"): parser, ("train",): parser, ...}``: every parser that parses a verb."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {path: parser}
    return {p: leaf for name, sub in subs[0].choices.items()
            for p, leaf in verb_parsers(sub, (*path, name)).items()}


PARSERS = verb_parsers(cli.build_parser())


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def code_block_commands() -> list[Example]:
    """``slimasr ...`` commands in fenced code blocks (backslash continuations joined, ``&&``
    chains split, comments dropped)."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for block in FENCE.finditer(text):
            first = line_of(text, block.start(1))
            logical, start = "", None
            for i, line in enumerate(block.group(1).splitlines()):
                start = first + i if start is None else start
                logical += line.rstrip("\\").strip() + " "
                if line.endswith("\\"):
                    continue
                for part in logical.split("&&"):
                    if part.strip().startswith("slimasr "):
                        found.append(Example(f"{doc.relative_to(ROOT)}:{start}", part.strip()))
                logical, start = "", None
    return found


def help_examples() -> list[Example]:
    """The example command lines every verb's ``--help`` ends with."""
    return [Example(f"slimasr {' '.join(path)} --help", line.strip())
            for path, parser in PARSERS.items()
            for line in (parser.epilog or "").splitlines() if line.strip().startswith("slimasr ")]


def mentions() -> list[Example]:
    """``slimasr VERB ...`` in inline code outside code blocks, and the first cell of command
    tables (``| `train --config CFG ...` | ...``)."""
    found = []
    verbs = {path[0] for path in PARSERS}
    for doc in DOCS:
        text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), doc.read_text())
        for span in SPAN.finditer(text):
            where = f"{doc.relative_to(ROOT)}:{line_of(text, span.start())}"
            words = " ".join(span.group(1).split())
            if (m := re.search(r"(?:^|\s)slimasr (\S.*)", words)) and m.group(1).split()[0] in verbs:
                found.append(Example(where, "slimasr " + m.group(1)))
            elif text[text.rfind("\n", 0, span.start()) + 1:span.start()] in ("| ", "|"):
                if words.split()[0] in verbs:  # a command table's first cell
                    found.append(Example(where, "slimasr " + words))
    return found


def leaf_of(words: list[str]) -> tuple[tuple[str, ...], argparse.ArgumentParser]:
    """The verb a command names (``["corpus", "synth", ...]`` -> ``("corpus", "synth")``)."""
    for n in (2, 1):
        if tuple(words[:n]) in PARSERS:
            return tuple(words[:n]), PARSERS[tuple(words[:n])]
    raise AssertionError(f"no such verb: slimasr {' '.join(words[:2])}")


def check_paths(text: str, where: object) -> None:
    for path in RECIPE_PATH.findall(text):
        assert list(ROOT.glob(path)), f"{where}: {path} does not exist"


def resolve(argv: list[str]) -> argparse.Namespace:
    """Parse like the slimasr command and build the verb's config (nothing runs)."""
    args = cli.build_parser().parse_args(argv)
    if getattr(args, "resolve", None) is not None:
        args.resolve(args)
    return args


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)  # documented paths (recipes/...) are relative to the checkout


# ---------------------------------------------------------------------------------------------
# Command lines


@pytest.mark.parametrize("example", code_block_commands() + help_examples(), ids=str)
def test_documented_command_parses_and_resolves(example, capsys):
    check_paths(example.text, example)
    try:
        resolve(shlex.split(example.text)[1:])
    except SystemExit:
        pytest.fail(f"{example}: `{example.text}` does not parse: {capsys.readouterr().err}")


@pytest.mark.parametrize("example", mentions(), ids=str)
def test_mentioned_command_names_real_verb_options_and_fields(example):
    path, parser = leaf_of(example.text.split()[1:])
    check_paths(example.text, example)
    known = {s for action in parser._actions for s in action.option_strings}
    unknown = sorted(set(OPTION.findall(example.text)) - known)
    assert not unknown, f"{example}: slimasr {' '.join(path)} has no option {', '.join(unknown)}"
    settings = SETTING.findall(example.text)
    if settings:
        check_settings_on_verb_example(path, settings, example)


def check_settings_on_verb_example(path: tuple[str, ...], settings: list[str], where: object) -> None:
    """KEY=VALUE settings must be fields of the verb's config: applied to its --help example."""
    examples = [e for e in help_examples() if e.where == f"slimasr {' '.join(path)} --help"]
    assert examples, f"{where}: slimasr {' '.join(path)} --help has no example to apply {settings} to"
    resolve([*shlex.split(examples[0].text)[1:], *settings])


@pytest.mark.parametrize("path", sorted(PARSERS), ids=" ".join)
def test_help_names_real_settings_and_paths(path):
    parser = PARSERS[path]
    texts = [parser.description or "", parser.epilog or "", *(a.help or "" for a in parser._actions)]
    check_paths(" ".join(texts), f"slimasr {' '.join(path)} --help")
    settings = [s for text in texts for s in SETTING.findall(text)
                if not text.lstrip().startswith("examples:")]
    if settings:
        check_settings_on_verb_example(path, settings, f"slimasr {' '.join(path)} --help")


@pytest.mark.parametrize("argv", [["--help"], ["--version"], *([*p, "--help"] for p in sorted(PARSERS))],
                         ids=" ".join)
def test_help_and_version_run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: slimasr") or out.startswith("slimasr ")


def test_every_verb_has_help_examples():
    missing = [" ".join(p) for p in PARSERS
               if not any(e.where == f"slimasr {' '.join(p)} --help" for e in help_examples())]
    assert not missing


def test_the_extraction_finds_the_documented_commands():
    """The test above only proves something while it finds the commands: count a few known ones."""
    blocks = [e.text for e in code_block_commands()]
    assert "slimasr demo" in blocks  # README Quickstart, after `pip install ... &&`
    assert ("slimasr prune --model exp/teacher --data data/smarthome --out exp/pruned --criterion "
            "taylor --target-macs 0.5 --finetune-epochs 4 --distill") in blocks  # continued line
    assert sum(e.where.startswith("docs/distillation.md") for e in code_block_commands()) == 3
    said = {e.text for e in mentions()}
    assert "slimasr prune --latency-table" in said  # running text
    assert "slimasr lm --data DIR --out FILE.arpa [--order 3]" in said  # a command table


# ---------------------------------------------------------------------------------------------
# Paths and links


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_doc_paths_and_links_exist(doc):
    text = doc.read_text()
    check_paths(text, doc.name)
    for target in LINK.findall(text):
        if "://" not in target:
            assert (doc.parent / target).exists(), f"{doc.name}: link to {target} is broken"


# ---------------------------------------------------------------------------------------------
# The README's Quickstart is what CI runs


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
