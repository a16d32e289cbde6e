"""Writing outputs so that an interrupted run never leaves a finished-looking file or folder.

A temporary file or folder beside the output (`.NAME.stdtrt-HOST-PID.XXXX.partial...`) is renamed over it only
on success, with the permissions a plain write gets under the user's umask (not mkstemp's owner-only
ones). A run killed outright (SIGKILL, a power cut) cannot remove its own: the next write of the same
output removes partials whose process is gone, and only stdtrt's (its name pattern, this host, a dead PID).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
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


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable read: it sets it, so it runs once, at import, before any thread
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _umask() -> int:
    return _UMASK


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def owner_tag() -> str:
    """Who writes a partial: `HOST-PID` (the host's name, letters and digits only). A PID is only
    meaningful on its own host: a partial another machine writes into a shared folder is never touched."""
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def remove_stale_partials(folder: Path, stem: str) -> list[Path]:
    """Remove `.STEM.stdtrt-HOST-PID.*.partial*` files and folders in `folder` written on this host by a
    process that no longer runs."""
    removed = []
    host = owner_tag().rsplit("-", 1)[0]
    pattern = re.compile(rf"^\.{re.escape(stem)}\.stdtrt-([A-Za-z0-9]+)-(\d+)\.[^/]*\.partial(\.[^/]*)?$")
    for entry in folder.iterdir() if folder.is_dir() else ():
        m = pattern.match(entry.name)
        if not m or m.group(1) != host:
            continue
        pid = int(m.group(2))
        if pid == os.getpid() or _alive(pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary file name beside `path` (same suffix); rename it to `path` only on success."""
    path = Path(path)
    check_writable(path)
    folder = path.parent if str(path.parent) else Path(".")
    remove_stale_partials(folder, path.stem)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.stdtrt-{owner_tag()}.", suffix=f".partial{path.suffix}", dir=folder
    )
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary folder beside `path`; on success replace `path` with it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path.parent, path.name)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{path.name}.stdtrt-{owner_tag()}.", suffix=".partial", dir=path.parent)
    )
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
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
