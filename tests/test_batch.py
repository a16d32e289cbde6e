"""stylize-batch on a real local Ray cluster (CPU, two one-core workers, tiny-sd): the outputs equal
stylize-video of each input, a segmented video equals the whole one, a worker SIGKILLed mid-video leaves
every output once and complete, a stopped job resumes, a corrupt input fails alone; and the bad-input
refusals (one line, exit 2, nothing written). One Ray cluster is shared by the whole module."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import frames_of, make_video

from stdtrt.config import BatchConfig, StylizeConfig

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

ray = pytest.importorskip("ray", reason="the Ray tests need the ray extra: pip install 'stdtrt[ray]'")

# --crf 0: lossless H.264, so that the decoded frames are the frames handed to the encoder: libx264's
# AVX-512 code does not always give the same bitstream for the same frames (a worker and the reference
# are different processes; tests/test_attention_cache.py says how that was found)
STYLE = StylizeConfig(model="tiny-sd", prompt="an oil painting", width=64, height=64, crf=0)
# each frame its own noise, drawn by its index in the video: a segment that drew the segment's noise (from
# its own frame 0) would differ from the whole video's run
FRESH = dataclasses.replace(STYLE, fresh_noise=True)


@pytest.fixture(scope="module")
def cluster():
    """One local Ray for the module: 2 CPUs, so two workers of one core each."""
    env = {
        k: os.environ[k]
        for k in ("PYTHONPATH", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "STDTRT_CACHE")
        if k in os.environ
    }
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    (root / "in" / "sub").mkdir(parents=True)
    make_video(root / "in" / "a.mp4", frames=6, size=(64, 64))
    make_video(root / "in" / "sub" / "b.mp4", frames=7, size=(64, 64), audio=False)
    make_video(root / "long.mp4", frames=20, size=(64, 64))
    return root


@pytest.fixture(scope="module")
def references(clips, tmp_path_factory):
    """`stdtrt stylize-video` of each input in a fresh process of one thread, as each worker is: the
    oracle (a process that ran other tests first may hold state the workers do not)."""
    out = tmp_path_factory.mktemp("ref")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    refs = {}
    for name in ("in/a.mp4", "in/sub/b.mp4", "long.mp4"):
        target = out / name.replace("/", "_")
        args = [
            "--model",
            "tiny-sd",
            "--prompt",
            STYLE.prompt,
            "--width",
            "64",
            "--height",
            "64",
            "--crf",
            "0",
        ]
        args += ["--fresh-noise"] if name == "long.mp4" else []
        run = subprocess.run([sys.executable, "-m", "stdtrt", "stylize-video", str(clips / name), "-o",
                              str(target), "--no-progress", *args], env=env, capture_output=True, text=True)  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        refs[name] = frames_of(target)
    return refs


def job(out, **kw) -> BatchConfig:
    return BatchConfig(stylize=kw.pop("stylize", STYLE), output=str(out), workers=kw.pop("workers", 2), **kw)


def same_frames(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def partial_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".partial" in p.name]


def writer_pid(partial: Path) -> int:
    """The process writing a partial output (io/atomic.py names it `.NAME.stdtrt-HOST-PID.`...)."""
    return int(partial.name.split(".stdtrt-")[1].split(".")[0].rsplit("-", 1)[1])


def test_videos_over_two_workers_equal_stylize_video(cluster, clips, references, tmp_path):
    from stdtrt.batch.job import run_job

    result = run_job(job(tmp_path / "out"), [str(clips / "in")], progress=False)
    assert sorted(result.done) == ["a.mp4", "sub/b.mp4"] and not result.failed
    assert len(result.workers) == 2  # both ran
    for name in ("a.mp4", "sub/b.mp4"):
        assert same_frames(frames_of(tmp_path / "out" / name), references[f"in/{name}"]), name
    lines = [json.loads(x) for x in (tmp_path / "out" / "stdtrt-batch.jsonl").read_text().splitlines()]
    assert sorted(Path(e["output"]).name for e in lines) == ["a.mp4", "b.mp4"]
    assert {e["frames"] for e in lines} == {6, 7} and all(e["status"] == "done" for e in lines)


def test_segmented_video_equals_the_whole(cluster, clips, references, tmp_path):
    from stdtrt.batch.job import run_job

    out = tmp_path / "out"
    # 1 s at 8 fps: segments of 8, 8 and 4 frames, each warmed up by the NFE - 1 = 3 frames before it
    result = run_job(job(out, segment_seconds=1.0, stylize=FRESH), [str(clips / "long.mp4")], progress=False)
    assert result.done == ["long.mp4"] and result.frames == 20
    assert sum(w.units for w in result.workers.values()) == 4  # three segments and the join
    assert same_frames(frames_of(out / "long.mp4"), references["long.mp4"])
    import av

    with av.open(str(out / "long.mp4")) as c:  # the input's audio, once
        assert len(c.streams.audio) == 1
    assert not list((out / ".stdtrt-batch").rglob("*.rgb"))  # the segments' frames are gone after the join


def test_worker_killed_mid_video_runs_it_again(cluster, clips, references, tmp_path):
    """SIGKILL the process writing a partial output (a Ray actor): the unit runs again on a new worker,
    and every output exists once, complete."""
    from stdtrt.batch.job import run_job

    src = tmp_path / "in"
    src.mkdir()
    for name in ("k1.mp4", "k2.mp4"):
        make_video(src / name, frames=12, size=(64, 64))
    out = tmp_path / "out"
    out.mkdir()
    killed: list[int] = []

    def killer():
        while not killed and not stop.is_set():
            for p in partial_files(out):
                pid = writer_pid(p)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            stop.wait(0.05)

    stop = threading.Event()
    thread = threading.Thread(target=killer)
    thread.start()
    try:
        result = run_job(job(out, max_retries=1), [str(src)], progress=False)
    finally:
        stop.set()
        thread.join()
    assert killed, "no partial output was ever seen to kill its writer"
    assert result.retries == 1 and sorted(result.done) == ["k1.mp4", "k2.mp4"] and not result.failed
    assert sorted(p.name for p in out.iterdir()) == ["k1.mp4", "k2.mp4", "stdtrt-batch.jsonl"]
    for name in ("k1.mp4", "k2.mp4"):
        assert len(frames_of(out / name)) == 12
    lines = [json.loads(x) for x in (out / "stdtrt-batch.jsonl").read_text().splitlines()]
    assert sorted(Path(e["output"]).name for e in lines) == ["k1.mp4", "k2.mp4"]  # each recorded once
    assert all(
        e["worker"].rsplit(":", 1)[1] != str(killed[0]) for e in lines
    )  # neither finished by the dead worker


def test_stopped_job_resumes(cluster, tmp_path):
    """A job stopped (KeyboardInterrupt, as Ctrl-C raises it) when its first video is done and the other
    is being written: no partial left; --resume skips the first and makes the other; a changed setting
    redoes both, an input touched but not changed is still done.

    No race with the machine's speed: the long video's writer is held (SIGSTOP) as soon as its partial
    output appears, so it is still being written whenever the short one is done; the job is stopped on
    that condition, and the driver's stop must kill the held worker and remove its partial."""
    from stdtrt.batch.job import plan, run_job

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    make_video(src / "short.mp4", frames=3, size=(64, 64))
    make_video(src / "long.mp4", frames=24, size=(64, 64))
    inputs = [str(src)]
    held: list[int] = []  # the long video's writer, stopped mid-write
    in_flight = []

    def hold_the_long_one():
        while not held and not watching.is_set():
            try:
                found = [p for p in partial_files(out) if p.name.startswith(".long.stdtrt-")]
            except OSError:  # a temporary file or folder gone while the folder was listed: look again
                continue
            for p in found:
                pid = writer_pid(p)
                os.kill(pid, signal.SIGSTOP)
                held.append(pid)
                return
            watching.wait(0.002)

    def stop_after_one(result):
        if result.done and held:  # the short one done; the long one cannot finish: its writer is held
            in_flight.extend(partial_files(out))
            raise KeyboardInterrupt

    watching = threading.Event()
    thread = threading.Thread(target=hold_the_long_one)
    thread.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_job(job(out), inputs, progress=False, on_progress=stop_after_one)
    finally:
        watching.set()
        thread.join()
        for pid in held:  # never left stopped (a failed test): the driver's stop has killed it already
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
                    os.kill(pid, signal.SIGKILL)
    assert held, "the long video's partial output was never seen"
    assert in_flight, "the long video was not being written when the job stopped"
    assert not partial_files(out)
    assert [p.name for p in out.rglob("*.mp4")] == ["short.mp4"]
    result = run_job(job(out, resume=True), inputs, progress=False)
    assert result.skipped == ["short.mp4"] and result.done == ["long.mp4"] and not result.failed
    assert len(frames_of(out / "long.mp4")) == 24
    assert len(plan(job(out, resume=True), inputs)[0]) == 0  # all done
    other = dataclasses.replace(STYLE, seed=1)
    assert len(plan(job(out, resume=True, stylize=other), inputs)[0]) == 2  # another setting: redone
    (src / "short.mp4").touch()  # the same bytes: still done
    assert len(plan(job(out, resume=True), inputs)[0]) == 0
    make_video(src / "short.mp4", frames=4, size=(64, 64))  # another input under the same name: redone
    assert len(plan(job(out, resume=True), inputs)[0]) == 1


def test_corrupt_input_fails_alone(cluster, clips, tmp_path, capsys):
    """Through the CLI (on this module's Ray): a corrupt input (refused by the driver's probe) and a cut
    one (failing in its worker, midway) listed with their reasons, the good one done, exit code 1."""
    from stdtrt.cli import main

    src = tmp_path / "in"
    src.mkdir()
    make_video(src / "good.mp4", frames=5, size=(64, 64))
    good = (src / "good.mp4").read_bytes()
    (src / "bad.mp4").write_bytes(good[: len(good) // 3] + b"\0" * 2000)  # cut, then garbage: no probe
    make_video(tmp_path / "whole.mp4", frames=16, size=(64, 64), faststart=True)
    whole = (tmp_path / "whole.mp4").read_bytes()
    (src / "cut.mp4").write_bytes(whole[: len(whole) * 2 // 3])  # opens (index first): fails in its worker
    with pytest.raises(SystemExit) as exit_:
        main(["stylize-batch", str(src), "-o", str(tmp_path / "out"), "--model", "tiny-sd", "--width", "64",
              "--height", "64", "--workers", "2", "--no-progress"])  # fmt: skip
    assert exit_.value.code == 1
    text = capsys.readouterr().out
    assert "failed 2" in text and "failed: bad.mp4: " in text and "done 1" in text, text
    assert "failed: cut.mp4: " in text and "truncated" in text.split("failed: cut.mp4: ")[1], text
    assert len(frames_of(tmp_path / "out" / "good.mp4")) == 5
    assert not (tmp_path / "out" / "bad.mp4").exists() and not (tmp_path / "out" / "cut.mp4").exists()
    assert not partial_files(tmp_path / "out")


# -- bad input: one line, exit 2, nothing written ---------------------------------------------------------
def _refused(args, capsys) -> str:
    from stdtrt.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["stylize-batch", *args, "--model", "tiny-sd", "--no-progress"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_bad_inputs_refused(clips, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    one, two = tmp_path / "x", tmp_path / "y"
    one.mkdir(), two.mkdir()
    make_video(one / "same.mp4", frames=3, size=(64, 64))
    (two / "same.mp4").write_bytes((one / "same.mp4").read_bytes())
    assert "would both write" in _refused(
        [str(one / "same.mp4"), str(two / "same.mp4"), "-o", str(out)], capsys
    )
    assert "inside the input folder" in _refused(
        [str(clips / "in"), "-o", str(clips / "in" / "styled")], capsys
    )
    assert "warm-up" in _refused(
        [str(clips / "long.mp4"), "-o", str(out), "--segment-seconds", "0.2"], capsys
    )
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "not a folder" in _refused([str(clips / "long.mp4"), "-o", str(blocker / "out")], capsys)
    assert "--segment-seconds cannot cut" in _refused(
        [str(clips / "long.mp4"), "-o", str(out), "--segment-seconds", "1", "--cache-frames", "1"], capsys
    )
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    assert "pip install 'stdtrt[ray]'" in _refused([str(clips / "long.mp4"), "-o", str(out)], capsys)
    assert not out.exists() and not (clips / "in" / "styled").exists()


def test_unanswering_cluster_refused(clips, tmp_path):
    """A --ray-address nobody listens on: one line within the timeout, exit 2, nothing written (its own
    process: this module's Ray is not running there)."""
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "stdtrt", "stylize-batch", str(clips / "long.mp4"), "-o", str(out), "--model",
         "tiny-sd", "--ray-address", "127.0.0.1:9", "--connect-timeout", "3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("error: Ray cluster at 127.0.0.1:9 does not answer"), run.stderr
    assert run.stderr.count("\n") == 1 and not out.exists()
