"""The job record: one JSON line per finished unit in the output folder (`stdtrt-batch.jsonl`), written by
the driver alone, each line flushed and synced before the next unit is counted done.

A line of a video that is done: input, its size and sha256, the settings' key, output, its sha256,
frames, seconds, worker. `--resume` skips an input whose last line says done with the same input size and
hash and the same key, and whose output is still there with the recorded hash; anything else is redone.
Failed units get a line too (status "failed", the reason): they are tried again by the next run. A line
cut short by a crash is ignored.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from stdtrt.io.hashing import file_hash


class JobRecord:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._done: dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # the last line of a run killed while writing it
                if isinstance(entry, dict) and "output" in entry:
                    self._done[entry["output"]] = entry

    def is_done(self, input_path: str, output: str, key: str, size: int, sha: str) -> bool:
        """Whether the record says `output` was made from this very input (size, sha256) with these
        settings (key), and the output is still there, unchanged."""
        e = self._done.get(output)
        if not e or e.get("status") != "done":
            return False
        if (e.get("input"), e.get("size"), e.get("sha256"), e.get("key")) != (input_path, size, sha, key):
            return False
        return Path(output).is_file() and file_hash(output) == e.get("output_sha256")

    def add(self, **entry) -> None:
        entry.setdefault("time", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        line = json.dumps(entry, sort_keys=True) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._done[entry["output"]] = entry
