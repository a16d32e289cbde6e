"""Writing outputs so that an interrupted run never leaves a finished-looking file or folder.

A temporary file or folder beside the output (`.NAME.stdtrt-HOST-PID.NS.XXXX.partial...`) is renamed over it
only on success, with the permissions a plain write gets under the user's umask (not mkstemp's owner-only
ones). A run killed outright (SIGKILL, a power cut) cannot remove its own: the next write of the same
output removes partials whose process is gone, and only stdtrt's (its name pattern, this host, a dead PID).
Two stdtrt processes writing the same output at once: the one that started second is refused.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
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
    _claim(path, path.stem, path.suffix, None)  # before any work: not while another run writes it


def check_writable_dir(path: Path) -> None:
    """Fail early, with the path, when the output folder `path` cannot be made (or replaced) in its
    parent, or written in where it exists: tried for real, in the nearest existing parent and in it."""
    path = Path(path).absolute()
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise StdtrtError(f"cannot make {path}: {parent} is not a folder")
    for folder in (parent, path) if path.is_dir() else (parent,):  # made or replaced there; written in
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".stdtrt-write-test.", dir=folder))
        except OSError as exc:
            raise StdtrtError(f"cannot write {path}: {folder} is not writable ({exc.strerror})") from None
    _claim(path, path.name, "", None)


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


# `.NAME.stdtrt-HOST-PID.[STARTED_NS.]XXXX.partial[.SUFFIX]`: what atomic_path and atomic_dir write beside an
# output (STARTED_NS orders two writers of the same output; partials of older stdtrt versions lack it).
_PARTIAL = r"^\.{stem}\.stdtrt-([A-Za-z0-9]+)-(\d+)\.(?:(\d+)\.)?[^/]*\.partial(\.[^/]*)?$"


@dataclass(frozen=True)
class Partial:
    path: Path
    host: str
    pid: int
    started: int  # time.time_ns() when it was made (0 when its name does not say)
    suffix: str  # the output's suffix ("" for a folder)


def partials(folder: Path, stem: str) -> list[Partial]:
    """stdtrt's partials of outputs named `stem` (any suffix) in `folder`."""
    pattern = re.compile(_PARTIAL.format(stem=re.escape(stem)))
    found = []
    for entry in folder.iterdir() if folder.is_dir() else ():
        m = pattern.match(entry.name)
        if m:
            found.append(Partial(entry, m.group(1), int(m.group(2)), int(m.group(3) or 0), m.group(4) or ""))
    return found


def remove_stale_partials(folder: Path, stem: str) -> list[Path]:
    """Remove `.STEM.stdtrt-HOST-PID.*.partial*` files and folders in `folder` written on this host by a
    process that no longer runs."""
    removed = []
    host = owner_tag().rsplit("-", 1)[0]
    for p in partials(folder, stem):
        if p.host != host or p.pid == os.getpid() or _alive(p.pid):
            continue
        if p.path.is_dir() and not p.path.is_symlink():
            shutil.rmtree(p.path, ignore_errors=True)
        else:
            p.path.unlink(missing_ok=True)
        removed.append(p.path)
    return removed


def _claim(path: Path, stem: str, suffix: str, mine: Path) -> None:
    """Refuse to write `path` while another live stdtrt process on this host writes it too: of two
    writers, the one that started first goes on (both see the same order, so exactly one does)."""
    host = owner_tag().rsplit("-", 1)[0]
    others = [p for p in partials(path.parent, stem) if p.suffix == suffix and p.host == host]
    me = next((p for p in others if p.path == mine), None)
    for other in others:
        if other.path == mine or other.pid == os.getpid() or not _alive(other.pid):
            continue
        if me is None or (other.started, other.pid) < (me.started, me.pid):
            raise StdtrtError(
                f"another stdtrt run (process {other.pid}) is writing {path} right now; wait for it to "
                f"finish or choose another output"
            )


def _prefix(stem: str) -> str:
    return f".{stem}.stdtrt-{owner_tag()}.{time.time_ns()}."


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary file name beside `path` (same suffix); rename it to `path` only on success. A
    second stdtrt process writing the same path at the same time is refused (_claim)."""
    path = Path(path)
    check_writable(path)
    folder = path.parent if str(path.parent) else Path(".")
    remove_stale_partials(folder, path.stem)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path.stem), suffix=f".partial{path.suffix}", dir=folder)
    os.close(fd)
    tmp = Path(tmp)
    try:
        _claim(path, path.stem, path.suffix, tmp)
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this file system or kernel cannot
        return False
    raise OSError(errno, os.strerror(errno), str(b))


def _old_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.stdtrt-old")


def _recover(path: Path) -> None:
    """An earlier replacement interrupted between its two renames (where no exchange exists) left the old
    folder under its `.old` name and nothing at `path`: put it back."""
    old = _old_name(path)
    if old.is_dir() and not path.exists():
        os.replace(old, path)


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary folder beside `path`; on success replace `path` with it. The old folder is
    swapped out in one atomic exchange where the system has one (else two renames, an interrupted pair
    repaired by the next call), so no moment exists without either the old or the new folder. Whether
    `path` may be replaced at all is the caller's decision (a bundle replaces only a bundle)."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    _recover(path)
    remove_stale_partials(path.parent, path.name)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path.name), suffix=".partial", dir=path.parent))
    try:
        _claim(path, path.name, "", tmp)
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if not path.exists():
            os.replace(tmp, path)
        elif _exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # the old folder, now under the temporary name
        else:
            old = _old_name(path)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
