"""What this machine has already verified: a bundle's files (and a torch backend's model, VAE and LoRA)
hashed once here, so that a bundle copied to another folder or machine (cp, rsync, a download: new
modification times) is hashed at its first start there, not at every start.

One JSON file under stdtrt's cache folder (config.cache_root(), per machine and user): for each key (a
file's absolute path, or "model:<source>" for a model's files) the stamp it had when it was verified (size
and modification time, or a model's fingerprint) and the digest it matched (the sha256 the manifest
records). A record counts only while all three still hold: the same path, the same stamp and the digest
the manifest asks for now; anything else is hashed again. Writes are atomic; two processes writing at
once can lose an entry (then it is hashed once more), never corrupt the file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from stdtrt.config import cache_root
from stdtrt.io.atomic import atomic_path

log = logging.getLogger(__name__)

RECORD = "verified-files.json"
MAX_ENTRIES = 4096  # the oldest are dropped past this (a few hundred bundles' files)


def _path() -> Path:
    return cache_root() / RECORD


def _read() -> dict:
    try:
        data = json.loads(_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def file_key(path: Path) -> str:
    return str(Path(path).resolve())


def file_stamp(path: Path) -> list[int]:
    stat = Path(path).stat()
    return [stat.st_size, stat.st_mtime_ns]


def known(key: str, stamp, digest: str) -> bool:
    """Whether `key` was verified here with this stamp against this digest."""
    entry = _read().get(key)
    return isinstance(entry, dict) and entry.get("stamp") == stamp and entry.get("digest") == digest


def remember(key: str, stamp, digest: str) -> None:
    """Record that `key`, with this stamp, matched this digest (best effort: a read-only cache is skipped)."""
    record = _read()
    record.pop(key, None)
    record[key] = {"stamp": stamp, "digest": digest}
    while len(record) > MAX_ENTRIES:
        record.pop(next(iter(record)))
    try:
        _path().parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(_path()) as tmp:
            tmp.write_text(json.dumps(record, indent=0) + "\n")
    except OSError as exc:
        log.debug("could not record verified files in %s: %s", _path(), exc)
