"""The --out folder of `stdtrt export`: what may be replaced (only an empty folder or a bundle, whatever
the flags: nothing of the user's is deleted), what may be reused (a bundle with the same cache key, its
engines when they fit this TensorRT and GPU), and the records of the files written into it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from stdtrt.availability import tensorrt_identity
from stdtrt.bundle import manifest as mf
from stdtrt.errors import StdtrtError
from stdtrt.io.atomic import check_writable_dir


def existing_bundle(out: Path, key: str, overwrite: bool):
    """The bundle already at `out` when it can be reused; None when `out` is free (or may be replaced).
    Only an empty folder or a bundle is ever replaced: a folder holding anything else is refused, with
    --overwrite too (nothing of the user's is deleted)."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise StdtrtError(f"--out {out} is a file; choose a folder")
    if not any(out.iterdir()):
        return None
    check_out(out)
    if overwrite:
        return None
    try:
        bundle = mf.read_bundle(out, verify=True)
    except StdtrtError as exc:
        raise StdtrtError(
            f"{out} holds a bundle that cannot be reused ({exc}); pass --overwrite to replace it"
        ) from None
    if bundle.key != key:
        m = bundle.manifest
        raise StdtrtError(
            f"{out} holds a different bundle ({m.model['name']}, nfe {bundle.nfe}, {bundle.width}x"
            f"{bundle.height}, {m.precision}); pass --overwrite to replace it or choose another --out"
        )
    return bundle


def check_out(out: Path) -> None:
    """Before anything is loaded: `out` can be written and holds nothing but a bundle (or nothing), and
    is not the folder this process (and the user's shell) is in: a bundle is replaced whole, folder and
    all, which would leave the shell in a deleted folder."""
    here = Path.cwd()
    if out == here or out in here.parents:
        raise StdtrtError(
            f"--out {out} is the folder you are in (or holds it): a bundle replaces its folder whole; name it "
            f"from outside, e.g. `cd .. && stdtrt export ... --out {out.name}`"
        )
    if out.is_dir():
        foreign = mf.foreign_entries(out)
        if foreign:
            shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
            raise StdtrtError(
                f"--out {out} holds files that are not part of an stdtrt bundle ({shown}); export replaces "
                f"only a bundle or an empty folder, even with --overwrite: choose another --out"
            )
    elif out.exists():
        raise StdtrtError(f"--out {out} is a file; choose a folder")
    check_writable_dir(out)


def engines_fit(bundle, key: str) -> bool:
    """The bundle's .plan engines were built from these graphs by this TensorRT for this GPU."""

    built = bundle.tensorrt
    if not built:
        return False
    here = tensorrt_identity()
    return built.get("key") == mf.tensorrt_key(key, here["version"], here["arch"])


def file_records(folder: Path, known: dict) -> dict:
    """sha256 and size of every file in the bundle folder; files already hashed in this export (same
    size) are not read again (a UNet's weights are gigabytes)."""
    names = sorted(p.name for p in folder.iterdir() if p.name != mf.MANIFEST)
    fresh = [n for n in names if n not in known or known[n]["bytes"] != (folder / n).stat().st_size]
    return {**{n: known[n] for n in names if n not in fresh}, **mf.file_entries(folder, fresh)}


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
