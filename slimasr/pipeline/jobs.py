"""Stages side by side: ``jobs: 2`` runs the stages that share no folder at the same time.

A stage waits for every earlier stage it depends on: one that writes a folder it reads (its
model, teacher, corpus, bundle, the models it evaluates) or writes, or that reads a folder it
writes. Stages that time something (the batch-1 latency of evaluated models, streaming's RTF, a
prune with a latency target) or show live output (stream) run with nothing beside them, so a busy
core never changes a number in the report; an evaluate stage scores each model as soon as it is
ready, beside other stages, and times them all after (``slimasr.pipeline.split_evaluate``). In the
demo the causal student and the pruned teacher train side by side, each on one core with one torch
thread; each is exported as soon as it is ready, and the teacher and the pruned model are scored
while the student still trains.

When two or more stages are ready, each runs in a process of its own (``spawn``) whose output goes
to ``EXPERIMENT/logs/KIND-NAME.log``; a board shows each running stage's latest line. A stage
that is ready alone runs in this process, as with ``jobs: 1``. When one stage fails, the others
are stopped (a training resumes from its last checkpoint on the next run) and its error is raised
here: a user's mistake as its one-line message, anything else with the path of its log. A
``stop`` check, called on each stage as it ends (or is found complete), halts the run the same
way when it says so: the others are stopped and nothing more starts.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable

from slimasr.config import config_to_dict
from slimasr.io import read_json, write_json_atomic

log = logging.getLogger(__name__)

LOGS = "logs"  # EXPERIMENT/logs/: the output of stages run in processes of their own
TIMES_FILE = "times.json"  # EXPERIMENT/times.json: each stage's start and wall time
ALONE_KINDS = ("latency", "stream", "report")  # they time something or print live
POLL_SECONDS = 0.5  # how often the board reads the logs while stages run
LOG_COLUMNS = 160  # line width of a stage's log


# --------------------------------------------------------------------------- what waits for what


def writes(stage: Any) -> set[str]:
    """The experiment folders (and files) a stage creates or replaces: its own folder; lm its
    file; report its files (evaluate and latency only add results: ``adds_to``)."""
    from slimasr.pipeline import output_folder

    spec = stage.spec
    if stage.kind in ("latency", "evaluate"):
        return set()
    if stage.kind == "lm":
        return {spec.name}
    if stage.kind == "report":
        return {f"{spec.name}.md", f"{spec.name}.json", f"{spec.name}.png"}
    name = output_folder(stage)
    return {name} if name else set()


def adds_to(stage: Any) -> set[str]:
    """The model folders a stage adds its results to (evaluate and latency: metrics.json and the
    files beside it), leaving the model itself as it is: a stage reading the model may run
    meanwhile (what reads those results, latency and report, runs alone after)."""
    if stage.kind in ("evaluate", "latency"):
        return {Path(m).parts[0] for m in stage.spec.models}
    return set()


def depends(later: Any, earlier: Any) -> bool:
    """Whether ``later`` must wait for ``earlier`` to finish: one creates or replaces a folder the
    other reads, writes or adds results to, or both add results to the same folder."""
    from slimasr.pipeline import reads

    out_e, out_l, add_e, add_l = writes(earlier), writes(later), adds_to(earlier), adds_to(later)
    return bool(out_e & (reads(later) | out_l | add_l) or (reads(earlier) | add_e) & out_l or add_e & add_l)


def runs_alone(stage: Any) -> bool:
    """Stages that time something or print live, and kinds whose writes are not known here
    (neither a folder of their own nor evaluate's results): nothing runs beside them."""
    from slimasr.pipeline import FOLDER_STAGES

    if stage.kind in ALONE_KINDS or stage.kind not in (*FOLDER_STAGES, "evaluate", "lm"):
        return True
    if stage.kind == "prune":
        from slimasr.config import from_dict
        from slimasr.prune.run import PruneConfig

        return from_dict(PruneConfig, stage.spec.config, "config").target.latency_share is not None
    return False


def ready(stages: list, alone: list[bool], index: int, open_: set[int], running: set[int]) -> bool:
    """Whether ``stages[index]`` may start: no unfinished earlier stage it depends on, and when
    either runs alone (``alone[i]``: ``runs_alone(stages[i])``), nothing unfinished before it and
    nothing running."""
    earlier = [j for j in sorted(open_ | running) if j < index]
    if alone[index]:
        return not earlier and not running
    if any(alone[j] for j in running | set(earlier)):
        return False
    return not any(depends(stages[index], stages[j]) for j in earlier)


# --------------------------------------------------------------------------- running them


@dataclass
class _Child:
    process: Any
    conn: Connection
    log_path: Path
    started: float


def run_stages(stages: list, exp: Path, jobs: int, stop: Callable[[Any], bool] | None = None
               ) -> tuple[dict, Any]:
    """Run every stage not already complete, up to ``jobs`` at a time. Returns ``{key: "ran" |
    "skipped"}`` in the recipe's order, and the stage after which ``stop`` halted the run (None)."""
    runner = _Runner(stages, exp, jobs, stop)
    try:
        with runner.board:
            runner.run()
    except BaseException:
        _stop(runner.running.values())
        raise
    _stop(runner.running.values())  # halted: what still runs resumes on the next run
    return {s.key: runner.outcome[s.key] for s in stages if s.key in runner.outcome}, runner.halted


class _Runner:
    """Which stages are open (not started), running (in processes of their own) and done."""

    def __init__(self, stages: list, exp: Path, jobs: int, stop: Callable[[Any], bool] | None = None):
        self.stages, self.exp, self.jobs = stages, exp, jobs
        self.stop, self.halted = stop, None  # halted: the stage after which stop() said so
        self.alone = [runs_alone(s) for s in stages]
        self.open, self.running, self.checked, self.outcome = set(range(len(stages))), {}, set(), {}
        self.book, self.board = _Book(exp), _Board(show=jobs > 1 and sys.stdout.isatty())

    def run(self) -> None:
        while (self.open or self.running) and self.halted is None:
            self.skip_complete()
            if self.halted is not None:
                return
            startable = [i for i in sorted(self.open) if self.ready(i)]
            if not startable and not self.running:
                if self.open:  # cannot happen: the first open stage is always ready
                    raise RuntimeError(f"pipeline: no stage can start ({sorted(self.open)})")
                return
            if self.jobs == 1 or (len(startable) == 1 and not self.running):
                self.run_here(startable[0])  # ready alone: here, as the sequential runner would
                continue
            for i in startable[:max(self.jobs - len(self.running), 0)]:
                self.start(i)
            self.collect_ended()

    def ready(self, index: int) -> bool:
        return ready(self.stages, self.alone, index, self.open, set(self.running))

    def skip_complete(self) -> None:
        """Mark ready stages whose output is complete as skipped (earlier first, so a chain of
        complete stages resolves at once; each is checked once)."""
        for i in sorted(self.open - self.checked):
            if self.ready(i):
                self.checked.add(i)
                if self.book.complete(self.stages[i]):
                    self.open.discard(i)
                    self.outcome[self.stages[i].key] = "skipped"
                    if self.ended(self.stages[i]):
                        return

    def run_here(self, index: int) -> None:
        stage = self.stages[index]
        self.open.discard(index)
        self.book.begin(stage)
        _run_here(stage, self.exp)
        self.book.finish(stage, own_process=False)
        self.outcome[stage.key] = "ran"
        self.ended(stage)

    def start(self, index: int) -> None:
        stage = self.stages[index]
        self.open.discard(index)
        self.book.begin(stage)
        self.running[index] = _start(stage, self.exp, self.board)

    def collect_ended(self) -> None:
        for i in _wait(self.running, self.board):
            stage, child = self.stages[i], self.running.pop(i)
            _collect(stage, child, self.board)  # raises its error: the others are stopped
            self.book.finish(stage, own_process=True)
            self.outcome[stage.key] = "ran"
            self.ended(stage)

    def ended(self, stage: Any) -> bool:
        """Whether the run halts after ``stage`` (the first such stage is kept in ``halted``)."""
        if self.halted is None and self.stop is not None and self.stop(stage):
            self.halted = stage
        return self.halted is not None


def _run_here(stage: Any, exp: Path) -> None:
    from slimasr.pipeline import STAGES, torch_threads

    log.info("[%s] running", stage.key)
    with torch_threads(stage.threads):
        STAGES[stage.kind][1](stage, exp)


def _start(stage: Any, exp: Path, board: "_Board") -> _Child:
    from slimasr.pipeline import STAGES

    log_path = exp / LOGS / f"{stage.key.replace(':', '-').replace('/', '-')}.log"  # a graph's: one file
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("")
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, name=stage.key,
                              args=(STAGES[stage.kind][1], stage, exp, log_path, theirs))
    process.start()
    theirs.close()
    board.say(f"[{stage.key}] running in a process of its own (output: {log_path})")
    board.add(stage.key, log_path)
    return _Child(process, ours, log_path, time.monotonic())


def _wait(running: dict, board: "_Board") -> list[int]:
    """The indexes of children that ended or sent their outcome (refreshing the board meanwhile;
    a child's outcome is read before it is joined, so a large one never blocks its exit)."""
    while True:
        ended = wait([h for c in running.values() for h in (c.process.sentinel, c.conn)],
                     timeout=POLL_SECONDS)
        board.refresh()
        if ended:
            return [i for i, c in running.items() if c.process.sentinel in ended or c.conn in ended]


def _collect(stage: Any, child: _Child, board: "_Board") -> None:
    """A finished child's outcome: nothing when it succeeded, else its error raised here."""
    try:
        message = child.conn.recv() if child.conn.poll() else None
    except EOFError:  # it ended without a word (killed, or crashed in native code)
        message = None
    child.conn.close()
    child.process.join()
    board.remove(stage.key)
    minutes, seconds = divmod(round(time.monotonic() - child.started), 60)
    if message == "ok" and child.process.exitcode == 0:
        board.say(f"[{stage.key}] done in {minutes} min {seconds:02d} s")
        return
    if isinstance(message, tuple):
        raise _rebuilt(message, f"stage {stage.key} (its output: {child.log_path})")
    raise RuntimeError(f"stage {stage.key}: its process ended with exit code "
                       f"{child.process.exitcode}; its output: {child.log_path}")


def _stop(children: Any) -> None:
    for child in children:
        if child.process.is_alive():
            child.process.terminate()
    for child in children:
        child.process.join()


def _child_main(run: Callable, stage: Any, exp: Path, log_path: Path, conn: Connection) -> None:
    """A stage in a process of its own: its output into ``log_path``, its outcome to ``conn``."""
    os.environ["COLUMNS"] = str(LOG_COLUMNS)  # rich wraps at this width when not on a terminal
    with open(log_path, "a", buffering=1) as out:
        sys.stdout = sys.stderr = out
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=out, force=True)
        try:
            from slimasr.pipeline import torch_threads

            with torch_threads(stage.threads):
                run(stage, exp)
        except BaseException as e:  # noqa: BLE001  (sent to the parent, which raises it)
            traceback.print_exc(file=out)
            conn.send(_described(e))
            os._exit(1)
        conn.send("ok")


def _described(error: BaseException) -> tuple:
    """What the parent needs to raise the error again, as plain values: a user's error (a
    DataError's path and problem, a ConfigError's or OSError's parts) or the text of any other."""
    from slimasr.errors import ConfigError, DataError

    if isinstance(error, DataError):
        return ("data", error.path, error.problem)
    if isinstance(error, ConfigError):
        return ("config", str(error))
    if isinstance(error, OSError) and error.strerror:  # a full disk, a missing file: the CLI's one line
        return ("os", error.errno, error.strerror, error.filename)
    return ("other", f"{type(error).__name__}: {error}")


def _rebuilt(described: tuple, where: str) -> BaseException:
    """The error ``_described`` gave, to raise here; one that is not a user's names ``where``."""
    from slimasr.errors import ConfigError, DataError

    kind, *parts = described
    if kind == "data":
        return DataError(*parts)
    if kind == "config":
        return ConfigError(*parts)
    if kind == "os":
        return OSError(*parts)
    return RuntimeError(f"{where}: {parts[0]}")


# --------------------------------------------------------------------------- bookkeeping


class _Book:
    """EXPERIMENT/pipeline.json: each finished stage's settings. A stage is dropped from it when
    it starts and recorded when it finishes, so a stopped one runs again. EXPERIMENT/times.json:
    when each stage that ran last started and how long it took, and whether in a process of its
    own (where the minutes went)."""

    def __init__(self, exp: Path):
        from slimasr.pipeline import STATE_FILE

        self.exp, self.path, self.times_path = exp, exp / STATE_FILE, exp / TIMES_FILE
        self.state = read_json(self.path) if self.path.is_file() else {}
        self.times = read_json(self.times_path) if self.times_path.is_file() else {}
        self.started: dict[str, tuple[float, str]] = {}

    def complete(self, stage: Any) -> bool:
        from slimasr.pipeline import STAGES

        if self.state.get(stage.key) == config_to_dict(stage.spec) and STAGES[stage.kind][2](stage, self.exp):
            log.info("[%s] complete, skipped", stage.key)
            return True
        return False

    def begin(self, stage: Any) -> None:
        from slimasr.pipeline import claim_folder

        claim_folder(stage, self.exp, finished=stage.key in self.state)
        self.state.pop(stage.key, None)
        write_json_atomic(self.path, self.state)
        self.started[stage.key] = (time.monotonic(), time.strftime("%Y-%m-%dT%H:%M:%S"))

    def finish(self, stage: Any, own_process: bool) -> None:
        self.state[stage.key] = config_to_dict(stage.spec)
        write_json_atomic(self.path, self.state)
        began, at = self.started.pop(stage.key)
        self.times[stage.key] = {"started": at, "seconds": round(time.monotonic() - began, 1),
                                 "own_process": own_process}
        write_json_atomic(self.times_path, self.times)


class _Board:
    """One line per stage running in a process of its own: its key, time, and latest output line
    (on a terminal; elsewhere only the start and end lines, through logging)."""

    def __init__(self, show: bool):
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.show, self.logs, self.tasks = show, {}, {}
        self.bar = Progress(SpinnerColumn(), TimeElapsedColumn(), TextColumn("{task.description}"),
                            disable=not show)

    def __enter__(self) -> "_Board":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def say(self, text: str) -> None:
        if self.show:
            self.bar.console.print(text, markup=False, highlight=False)
        else:
            log.info("%s", text)

    def add(self, key: str, log_path: Path) -> None:
        self.logs[key] = log_path
        self.tasks[key] = self.bar.add_task(key, total=None)

    def remove(self, key: str) -> None:
        self.logs.pop(key, None)
        if (task := self.tasks.pop(key, None)) is not None:
            self.bar.remove_task(task)

    def refresh(self) -> None:
        if not self.show:
            return
        width = max(self.bar.console.width - 30, 20)
        for key, path in self.logs.items():
            line = f"{key}: {last_line(path)}"
            self.bar.update(self.tasks[key], description=line[:width])


def last_line(path: Path, tail: int = 4096) -> str:
    """The last non-empty line of a log (a progress bar's carriage returns split lines too)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - tail, 0))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n")]
    return next((line for line in reversed(lines) if line), "")
