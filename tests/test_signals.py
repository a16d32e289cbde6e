"""How runs end: SIGTERM stops a real `stdtrt stylize-video` with one line, exit 143 and nothing left behind;
a killed run's partial output is removed by the next write of the same output (only stdtrt's, only a dead
process's); outputs get the permissions of a plain write under the user's umask."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_video

from stdtrt.io.atomic import atomic_dir, atomic_path, owner_tag, remove_stale_partials


def _partials(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if ".partial" in p.name]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_stops_a_run_cleanly(tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=400, size=(64, 48), audio=False)
    out = tmp_path / "out.mp4"
    cmd = [sys.executable, "-m", "stdtrt", "stylize-video", str(src), "-o", str(out), "--model", "tiny-sd"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not _partials(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # frames are being written
    assert proc.poll() is None, proc.communicate()
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    assert proc.returncode == 143, err
    lines = [ln for ln in err.splitlines() if ln.strip() and "torchvision" not in ln]
    assert lines[-1].startswith("terminated (SIGTERM)"), err
    assert not out.exists() and not _partials(tmp_path)
    assert took < 15, took  # the frame in flight finishes, nothing more (generous: a shared 2-core CI box)


def test_a_dead_runs_partials_are_removed_and_only_those(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    host = owner_tag().rsplit("-", 1)[0]
    stale = tmp_path / f".out.stdtrt-{host}-{pid}.abc123.partial.mp4"
    stale_dir = tmp_path / f".bundle.stdtrt-{host}-{pid}.xyz.partial"
    alive = tmp_path / f".out.stdtrt-{host}-{os.getppid()}.def456.partial.mkv"  # a running process's: kept
    elsewhere = tmp_path / f".out.stdtrt-otherhost{host}-{pid}.a1.partial.mp4"  # another machine's: kept
    foreign = tmp_path / ".out.mine.partial.mp4"  # not stdtrt's pattern: kept
    for p in (stale, alive, elsewhere, foreign):
        p.write_bytes(b"x")
    stale_dir.mkdir()
    (stale_dir / "unet.onnx").write_bytes(b"x")
    with atomic_path(tmp_path / "out.mp4") as tmp:
        tmp.write_bytes(b"video")
    assert not stale.exists() and alive.exists() and elsewhere.exists() and foreign.exists()
    assert (tmp_path / "out.mp4").read_bytes() == b"video"
    with atomic_dir(tmp_path / "bundle") as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert not stale_dir.exists() and (tmp_path / "bundle" / "manifest.json").is_file()
    assert remove_stale_partials(tmp_path, "out") == []


def test_outputs_get_the_umask_permissions_of_a_plain_write(tmp_path):
    from stdtrt.io.images import write_image

    old = os.umask(0o022)
    try:
        write_image(tmp_path / "out.png", np.zeros((8, 8, 3), np.uint8))
        with atomic_dir(tmp_path / "bundle") as tmp:
            (tmp / "manifest.json").write_text("{}")
        plain = tmp_path / "plain"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.png").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "bundle").stat().st_mode & 0o777 == 0o755
