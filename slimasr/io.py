"""Atomic file writing: a reader never sees a half-written file, and a failed write loses nothing.

Everything slimasr writes goes to a temporary file in the destination folder and is renamed into
place only once it is complete (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


TMP_PREFIX = ".tmp-"  # temporary names are short (prefix, random, suffix): any legal name fits
MAX_TMP_SUFFIX = 16  # characters of the destination's suffixes a temporary name keeps at most


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; rename it onto ``path`` if the block succeeds.

    ``suffix`` defaults to the destination's full suffix (e.g. ``.jsonl.gz``), so libraries that
    pick a format from the file name (lhotse, soundfile) see the right one. An existing folder at
    ``path`` is refused (DataError); an OSError of the temporary file names ``path``.
    """
    path = Path(path)
    if path.is_dir():
        from slimasr.errors import DataError

        raise DataError(path, "is a folder; give a file name")
    if suffix is None:
        suffix = _short_suffix(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp made it 0600
        os.replace(tmp_path, path)
    except OSError as e:
        raise _about_destination(e, path) from None
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    """The process's umask, which atomic outputs follow like every other file. Read from
    /proc on Linux; elsewhere set and restored at once (os.umask is the only portable reader)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _short_suffix(path: Path) -> str:
    """The destination's suffixes (``.jsonl.gz``), the last ones only if they are long."""
    suffix = ""
    for part in reversed(path.suffixes):
        if len(part) + len(suffix) > MAX_TMP_SUFFIX:
            break
        suffix = part + suffix
    return suffix


def _about_destination(error: OSError, path: Path) -> OSError:
    """``error``, naming ``path`` if it named a temporary file beside it or no file at all (a full
    disk): the user knows that name, not ours."""
    name = error.filename
    ours = name is not None and Path(name).parent == path.parent and Path(name).name.startswith(TMP_PREFIX)
    if ours or (name is None and error.errno is not None):
        return OSError(error.errno, error.strerror, str(path))  # (the errno's subclass)
    return error


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=path.parent))
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp made it 0700
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, suffix=".old", dir=path.parent))
            os.replace(path, old / "old")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as e:
        raise _about_destination(e, path) from None
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file, turning any failure into a one-line DataError naming the file."""
    from slimasr.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"not valid JSON ({e})") from None


# ---------------------------------------------------------------------------------------------
# Output folders: what a writing verb may replace, and one writer at a time

MODEL_MARKERS = ("config.json", "model.safetensors")  # a model directory
RUN_MARKERS = ("checkpoints", "training.json", "train_log.csv", "prune.json", "steps")  # a run
# Everything train, distill, prune and evaluate leave in an output folder: ``--overwrite`` removes
# exactly these names (and nothing else a user keeps there) before the new run writes.
OUTPUT_NAMES = (*MODEL_MARKERS, *RUN_MARKERS, "tokenizer.json", "tokenizer.model", "cmvn.json",
                "metrics.json", "eval_utterances.jsonl", "eval_worst.json", "teacher_cache",
                "student_init")
LOCK_NAME = ".slimasr.lock"  # OUT/.slimasr.lock: held (flock) by the process writing OUT


def check_output_dir(path: str | Path, overwrite: bool = False, inputs: Any = (),
                     hint: str = "") -> None:
    """Refuse an output folder that is (or would clear) one of ``inputs``, whatever
    ``overwrite`` says, or that already holds a model or a training run unless ``overwrite``.
    ``hint``: an alternative the error offers (``"pass --resume to continue it"``)."""
    from slimasr.errors import DataError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(path, "exists and is not a directory")
    for source in inputs:
        if source is not None and _is_or_would_clear(path, Path(source)):
            raise DataError(path, f"is the input {source} (or holds it); choose another output folder")
    found = [name for name in (*MODEL_MARKERS, *RUN_MARKERS) if (path / name).exists()]
    if found and not overwrite:
        offer = f"{hint}, " if hint else ""
        raise DataError(path, f"already holds a model or a training run ({', '.join(found)}); "
                              f"{offer}pass --overwrite to replace it, or choose another output folder")


def _is_or_would_clear(out: Path, source: Path) -> bool:
    """Whether ``source`` is ``out`` or lies inside a name ``clear_output_dir(out)`` removes."""
    out, source = out.resolve(), source.resolve()
    if source == out:
        return True
    return source.is_relative_to(out) and source.relative_to(out).parts[0] in OUTPUT_NAMES


def clear_output_dir(path: str | Path) -> None:
    """Remove what an earlier run left in ``path`` (``OUTPUT_NAMES`` only), so no stale metrics,
    checkpoints or pruning steps end up beside a new model. Other files are left alone."""
    path = Path(path)
    for name in OUTPUT_NAMES:
        target = path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


@contextlib.contextmanager
def output_lock(folder: str | Path, verb: str) -> Iterator[Path]:
    """Hold ``FOLDER/.slimasr.lock`` (``flock``, exclusive) while a verb writes ``folder``; a second
    writer gets a one-line DataError naming the holder. The lock goes with the process, so a file
    left by a killed run does not block; the file is removed on release, and so is ``folder`` when
    this call created it and nothing was written there."""
    from slimasr.errors import DataError

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(folder, "exists and is not a directory")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _acquire(folder, verb)
    except OSError as e:
        raise DataError(folder, f"cannot lock this output folder ({e.strerror or e})") from None
    try:
        yield folder
    finally:
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(fd), os.stat(folder / LOCK_NAME)):  # not a newer one
                (folder / LOCK_NAME).unlink()  # while we hold it: no one else can
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty


def _acquire(folder: Path, verb: str) -> int:
    """Lock ``folder``'s lock file and write who holds it (pid, host, verb, start time)."""
    import datetime
    import socket

    fd = _open_locked(folder / LOCK_NAME, folder)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "verb": verb,
              "started": datetime.datetime.now().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(record) + "\n").encode())
    return fd


def _open_locked(path: Path, folder: Path) -> int:
    """The lock file, opened and flocked; tried again when a releasing holder unlinked it
    meanwhile (we would hold a lock on a file no one else can find). Without ``fcntl``
    (Windows) it is opened, not locked."""
    from slimasr.errors import DataError

    try:
        import fcntl
    except ImportError:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise DataError(folder, f"is being written by another process ({holder}); wait for it "
                                    "to finish or choose another output folder") from None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def waiting_lock(path: str | Path) -> Iterator[None]:
    """Hold ``path`` (``flock``, exclusive), waiting while another process holds it: for work
    two processes may both start, like a shared feature cache, where the second should reuse
    the first's result. The file stays (an unlinked lock file could be held twice). Without
    ``fcntl`` (Windows) nothing is locked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """``slimasr train, pid 12 on host, since 2025-01-01T12:00:00`` from a held lock file."""
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return (f"slimasr {record['verb']}, pid {record['pid']} on {record['host']}, "
                f"since {record['started']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "slimasr, holder unknown"


def file_sha256(path: str | Path, decompressed: bool = False) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks. ``decompressed``: of a ``.gz`` file's
    content instead (gzip stores the time it was written, so the same content written twice has
    other bytes)."""
    digest = hashlib.sha256()
    opener = gzip.open if decompressed and Path(path).suffix == ".gz" else open
    with opener(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
