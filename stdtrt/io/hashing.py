"""Content hashes: of files (sha256, streamed) and of modules' weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def module_hash(*modules: torch.nn.Module) -> str:
    """sha256 of the modules' weights (names, shapes, dtypes and bytes): a content hash of the model."""
    h = hashlib.sha256()
    for module in modules:
        for key, value in sorted(module.state_dict().items()):
            t = value.detach().to("cpu").contiguous()
            h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
