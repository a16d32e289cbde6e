"""How a run of the command line ends on SIGTERM (raised like Ctrl-C) or an OSError (one line)."""

from __future__ import annotations


class Terminated(BaseException):
    """SIGTERM (systemd, `docker stop`, job schedulers), raised in the main thread where Ctrl-C would be,
    so the same clean-up runs (temporary outputs removed, worker threads stopped); not a KeyboardInterrupt,
    which click would turn into its own Abort."""


def on_sigterm(signum, frame) -> None:
    """The SIGTERM handler `main` installs: raises Terminated in the main thread."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    raise Terminated()


def os_error_line(exc: OSError) -> str:
    """An OSError as one line: the cause, the path, and for a full disk or a read-only place what to do
    (outputs are written to temporary names: none is left half-written under its own)."""
    import errno

    cause = exc.strerror or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    where = f" ({exc.filename})" if exc.filename else ""
    hint = {
        errno.ENOSPC: "; free some space and run again",
        errno.EDQUOT: "; free some space and run again",
        errno.EFBIG: "; the file system or a limit refuses a file this large",
        errno.EACCES: "; choose a folder you can write",
        errno.EPERM: "; choose a folder you can write",
        errno.EROFS: "; choose a folder you can write",
    }.get(exc.errno, "")
    return f"{cause}{where}{hint}"
