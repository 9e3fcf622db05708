"""Atomic file output: a file (or a folder) appears complete, with normal permissions, or not at
all. Every output rfdeploy writes goes through here: results, annotated images, ONNX files,
engines and manifests, checkpoints, calibration caches, Triton repositories, datasets.

Each output is written to a temporary name beside its destination (same file system) and renamed
into place on success; on any exception or interrupt the temporary is removed and the destination
is left as it was. ``mkstemp``/``mkdtemp`` create private (0600/0700) temporaries, so outputs get
the permissions an ordinary file or folder would get under the process umask.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from rfdeploy.core.errors import InputError


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _default_mode() -> int:
    return 0o666 & ~_umask()


def _default_dir_mode() -> int:
    return 0o777 & ~_umask()


def is_among(path: str | os.PathLike, others) -> bool:
    """Whether ``path`` names the same file as one of ``others`` (an output that would replace an
    input), whatever the spelling (relative, ``..``, symlinks)."""
    target = Path(path).resolve()
    return any(Path(o).resolve() == target for o in others)


def _unwritable(dst: Path, e: OSError) -> InputError:
    return InputError(f"cannot write {dst}: {e.strerror or e}", hint="choose an output path in a writable folder")


def _temp_beside(dst: Path, suffix: str) -> Path:
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=suffix, dir=dst.parent)
    except OSError as e:  # a parent that is a file, a read-only or missing mount: a user error
        raise _unwritable(dst, e) from None
    os.close(fd)
    return Path(tmp)


def _install(tmp: Path, dst: Path) -> None:
    os.chmod(tmp, _default_mode())
    os.replace(tmp, dst)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".part") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    On any exception (or interrupt) the temporary file is removed and ``path`` is untouched.
    """
    dst = Path(path)
    tmp = _temp_beside(dst, suffix)
    try:
        yield tmp
        _install(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def publish_pair(primary_tmp: str | os.PathLike, primary: str | os.PathLike,
                 companion_tmp: str | os.PathLike, companion: str | os.PathLike) -> None:
    """Move two complete files that belong together (an engine and its manifest) into place so
    that no reader pairs a new ``primary`` with an old ``companion``: the old companion goes first,
    then the primary is renamed, then the companion. Between the steps a reader finds a primary
    without its companion (an incomplete pair, to be rebuilt or waited for), never a wrong pair.
    Both temporaries get the default file mode. Callers serialise publishers (a lock)."""
    for tmp in (primary_tmp, companion_tmp):
        os.chmod(tmp, _default_mode())
    with contextlib.suppress(FileNotFoundError):
        os.unlink(companion)
    os.replace(primary_tmp, primary)
    os.replace(companion_tmp, companion)


def atomic_write_bytes(path: str | os.PathLike, data) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(memoryview(data))
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class AtomicTextFile:
    """A text file written line by line (results of a long run): the lines go to a temporary file
    beside the target, renamed into place by :meth:`commit` (or leaving a ``with`` block without
    an error); :meth:`abort` removes it, so an interrupted run never leaves a truncated file."""

    def __init__(self, path: str | os.PathLike, overwrite: bool = False):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise InputError(f"{self.path} exists", hint="pass --overwrite to replace it")
        if self.path.is_dir():
            raise InputError(f"{self.path} is a directory")
        self.tmp = _temp_beside(self.path, ".part")
        self.f = open(self.tmp, "w", encoding="utf-8")

    def write_line(self, text: str) -> None:
        self.f.write(text + "\n")

    def commit(self) -> None:
        self.f.close()
        _install(self.tmp, self.path)

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``, filled by the caller; on success it becomes
    ``path`` (an existing empty folder there is replaced; a non-empty one only with ``replace``,
    and the old one is deleted once the new one is in place). On failure the temporary folder is
    removed and ``path`` is left as it was."""
    dst = Path(path)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    except OSError as e:
        raise _unwritable(dst, e) from None
    try:
        yield tmp
        for d, dirs, files in os.walk(tmp):
            os.chmod(d, _default_dir_mode())
            for f in files:
                os.chmod(os.path.join(d, f), _default_mode())
        _swap_dir(tmp, dst, replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_dir(tmp: Path, dst: Path, replace: bool) -> None:
    if dst.is_dir() and not any(dst.iterdir()):
        dst.rmdir()
    if not dst.exists():
        os.replace(tmp, dst)
        return
    if not replace:
        raise InputError(f"{dst} exists and is not an empty folder", hint="choose a new output folder")
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    os.replace(dst, old)
    try:
        os.replace(tmp, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | os.PathLike, what: str, bad_content_error=None):
    """Parse a user's JSON file. Missing -> InputError; unreadable or not JSON -> ``bad_content_error``
    (InputError by default), each naming ``what`` the file was meant to be."""
    bad = bad_content_error or InputError
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise InputError(f"{what} not found: {path}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"cannot read {what} {path}: {e}") from e
