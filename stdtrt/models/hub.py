"""Where stdtrt finds weights by name: a local path, or a hub id's snapshot in the local Hugging Face cache.
Never a download: a name that is not here is one line saying how to get it and what works offline."""

from __future__ import annotations

import contextlib
from pathlib import Path

from stdtrt.errors import StdtrtError


def local_folder(name: str, what: str, download: str, offline: str) -> Path:
    """`name` as a local path (it exists), or the snapshot of hub id `name` in the local HF cache.

    what: what is looked for ("motion adapter"); download: the `hf download` arguments that would fetch it;
    offline: what works without it ("`--vae tiny-taesd` works offline")."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise StdtrtError(f"{what} {name!r} is neither a folder nor a hub id (owner/name); {offline}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError, or an incomplete cache entry
        from huggingface_hub.constants import HF_HUB_CACHE

        raise StdtrtError(
            f"{what} {name!r} is not in the local Hugging Face cache ({HF_HUB_CACHE}) and stdtrt never downloads "
            f"on its own: run `hf download {download}` (or pass a folder); {offline} [{type(exc).__name__}]"
        ) from None


@contextlib.contextmanager
def quiet_transformers():
    """No per-load or per-save progress bar from transformers (a run prints its own progress)."""
    from transformers.utils import logging as tlog

    enabled = tlog.is_progress_bar_enabled()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            tlog.enable_progress_bar()
