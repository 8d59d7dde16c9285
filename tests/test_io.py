"""slimasr.io: atomic writers; output folders (what may be replaced, one writer at a time)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from slimasr.errors import DataError
from slimasr.io import (
    LOCK_NAME,
    atomic_dir,
    atomic_path,
    check_output_dir,
    clear_output_dir,
    output_lock,
    write_text_atomic,
)


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_atomic_files_and_folders_get_the_modes_the_umask_gives(tmp_path, umask):
    """mkstemp / mkdtemp create 0600 / 0700; what lands must look like any other output."""
    write_text_atomic(tmp_path / "a.json", "{}")
    with atomic_path(tmp_path / "b.flac") as tmp:
        tmp.write_bytes(b"1")
    with atomic_dir(tmp_path / "corpus") as tmp:
        (tmp / "c.txt").write_text("c")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [*tmp_path.iterdir(), tmp_path / "corpus/c.txt"]}
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    assert modes == {"a.json": file_mode, "b.flac": file_mode, "corpus": dir_mode, "c.txt": file_mode}


def test_umask_is_read_and_kept_where_there_is_no_proc(monkeypatch, umask):
    import slimasr.io as io_module

    def no_proc(*args, **kwargs):
        raise FileNotFoundError("/proc/self/status")

    monkeypatch.setattr(io_module, "open", no_proc, raising=False)
    assert io_module._umask() == umask
    assert os.umask(umask) == umask  # unchanged by reading it


# ---------------------------------------------------------------------------------------------
# Output folders: check_output_dir, clear_output_dir, output_lock

def model_folder(path: Path) -> Path:
    """A folder as train leaves it, plus a file of the user's."""
    (path / "checkpoints" / "last").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "metrics.json", "train_log.csv"):
        (path / name).write_text(name)
    (path / "notes.txt").write_text("mine")
    return path


@pytest.mark.parametrize("marker", ["config.json", "model.safetensors", "checkpoints", "training.json",
                                    "train_log.csv", "prune.json", "steps"])
def test_a_folder_holding_a_model_or_a_run_is_refused_without_overwrite(tmp_path, marker):
    target = tmp_path / "out"
    target.mkdir()
    (target / marker).mkdir() if marker in ("checkpoints", "steps") else (target / marker).write_text("x")
    with pytest.raises(DataError) as err:
        check_output_dir(target, hint="pass --resume to continue it")
    assert str(err.value) == (f"{target}: already holds a model or a training run ({marker}); pass "
                              "--resume to continue it, pass --overwrite to replace it, or choose "
                              "another output folder")
    check_output_dir(target, overwrite=True)
    check_output_dir(tmp_path / "new")  # absent: fine
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("x")
    check_output_dir(tmp_path / "user")  # only files of the user's: fine


def test_an_input_is_never_an_output_even_with_overwrite(tmp_path):
    model = model_folder(tmp_path / "m")
    for source in (model, tmp_path / "m" / ".", model / "checkpoints" / "last"):
        with pytest.raises(DataError, match=f"^{model}: is the input .* choose another output folder$"):
            check_output_dir(model, overwrite=True, inputs=[tmp_path / "data", source])
    check_output_dir(model, overwrite=True, inputs=[model / "notes.txt"])  # kept by overwrite: fine
    check_output_dir(tmp_path / "m2", inputs=[model])  # beside the input: fine


def test_overwrite_clears_what_runs_left_and_nothing_else(tmp_path):
    model = model_folder(tmp_path / "m")
    clear_output_dir(model)
    assert sorted(p.name for p in model.iterdir()) == ["notes.txt"]


LOCK_HOLDER = """
import sys, time
from slimasr.io import output_lock
with output_lock(sys.argv[1], "train"):
    print("locked", flush=True)
    sys.stdin.read()  # until the test closes stdin (or kills us)
"""


def hold_lock(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "locked\n"
    return proc


def test_a_second_writer_gets_one_line_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    proc = hold_lock(out)
    try:
        with pytest.raises(DataError) as err:
            with output_lock(out, "prune"):
                pass
        message = str(err.value)
        assert message.startswith(f"{out}: is being written by another process (slimasr train, "
                                  f"pid {proc.pid} on ")
        assert message.endswith("); wait for it to finish or choose another output folder")
        assert "\n" not in message
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    assert not out.exists()  # the holder created it, wrote nothing and removed it again
    with output_lock(out, "prune"):  # free once the holder is gone
        record = json.loads((out / LOCK_NAME).read_text())
        assert record["verb"] == "prune" and record["pid"] == os.getpid()
    assert not out.exists()


def test_a_killed_holder_leaves_a_stale_file_that_does_not_block(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = hold_lock(out)
    proc.kill()
    proc.wait(timeout=60)
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == proc.pid  # left behind
    with output_lock(out, "train"):
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert sorted(out.iterdir()) == []  # the folder existed before: kept, lock file gone


def test_the_lock_is_released_when_the_writer_fails(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with output_lock(out, "train"):
            (out / "partial").write_text("x")
            raise RuntimeError("failed")
    with output_lock(out, "train"):
        pass
    assert sorted(p.name for p in out.iterdir()) == ["partial"]


def test_waiting_lock_makes_the_second_holder_wait_for_the_first(tmp_path):
    """Two processes that need the same feature cache compute it once: the second waits."""
    import threading

    from slimasr.io import waiting_lock

    path = tmp_path / "cache" / "train.lock"
    got = threading.Event()

    def second():
        with waiting_lock(path):  # another open file description: flock makes it wait
            got.set()

    with waiting_lock(path):
        thread = threading.Thread(target=second)
        thread.start()
        assert not got.wait(0.5)  # held here: the second one waits
    assert got.wait(30)  # released: it goes on
    thread.join()
    assert path.is_file()  # the lock file stays (unlinking it could let two hold it at once)
