"""Writing outputs so that an interrupted run never leaves a finished-looking file or folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from stdtrt.errors import StdtrtError


def check_writable(path: Path) -> None:
    """Fail early, with the path, when the output's folder cannot be written (tried for real)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise StdtrtError(
            f"output folder {folder} does not exist" if not folder.exists() else f"{folder} is not a folder"
        )
    if path.is_dir():
        raise StdtrtError(f"output path {path} is a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".stdtrt-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StdtrtError(f"output folder {folder} is not writable ({exc.strerror})") from None


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary file name beside `path` (same suffix); rename it to `path` only on success."""
    path = Path(path)
    check_writable(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent or "."
    )
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary folder beside `path`; on success replace `path` with it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
