"""`stdtrt live`'s capture-to-sink latency (p50/p95), output fps and drops, for the pipe and the page paths.

- pipe: a live producer writes y4m frames at --fps into `stdtrt live --source - --realtime --sink -` (the
  newest frame wins), for --seconds; the final line's figures are read.
- page: headless Chromium (Debian's package) with a fake camera (a y4m file of the same frames at --fps)
  opens the page of `stdtrt live --source web --sink web`: the webcam goes over WebRTC to stdtrt and back;
  after --seconds the page's /stop ends the run. The latency is measured inside stdtrt, from a frame's
  arrival in the process to its hand-off to the sink (the page's track or the pipe), so it leaves out the
  browser's capture, the two VP8 legs and the display.

Models: tiny-sd (the built-in tiny model, NFE 4) and random-sd15 (SD 1.5's architecture, random weights,
NFE 2) with random-taesd (TAESD's real size) as the tiny VAE, torch on the CPU.

    python benchmarks/live_latency.py                  # both models, both paths: about 6 minutes on 2 cores
    python benchmarks/live_latency.py --models tiny-sd --paths pipe
Writes benchmarks/results/live-latency-<machine>.json and .txt.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stdtrt.eval.bench import machine  # noqa: E402
from stdtrt.io.samples import sample_frames  # noqa: E402

MODELS = {
    "tiny-sd": ["--model", "tiny-sd", "--nfe", "4", "--width", "256", "--height", "192"],
    "random-sd15": ["--model", "random-sd15", "--vae", "random-taesd", "--nfe", "2", "--width", "128",
                    "--height", "128"],
}  # fmt: skip
LINE = re.compile(
    r"live: (\d+) frames, ([\d.]+) fps, capture-to-sink latency p50 (\d+) ms p95 (\d+) ms, (\d+) dropped"
)


def y4m(frames, fps: int) -> tuple[bytes, list[bytes]]:
    import av

    h, w = frames[0].shape[:2]
    header = f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode()
    body = [b"FRAME\n" + av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p").to_ndarray()
            .tobytes() for f in frames]  # fmt: skip
    return header, body


def figures(stderr: str) -> dict:
    m = LINE.search(stderr)
    if m is None:
        raise SystemExit(f"no final line in:\n{stderr[-2000:]}")
    n, fps, p50, p95, dropped = m.groups()
    return {
        "frames": int(n),
        "fps": float(fps),
        "p50_ms": int(p50),
        "p95_ms": int(p95),
        "dropped": int(dropped),
    }


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def pipe(model: list[str], fps: int, seconds: float) -> dict:
    header, body = y4m(list(sample_frames(60, 320, 240)), fps)
    argv = [sys.executable, "-m", "stdtrt", "live", *model, "--prompt", "an oil painting", "--source", "-",
            "--realtime", "--sink", "-"]  # fmt: skip
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env())  # fmt: skip
    err: list[bytes] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    reader.start()
    proc.stdin.write(header)
    # the producer is live: it starts its clock once the model is loaded (the first frame is read then)
    proc.stdin.write(body[0])
    proc.stdin.flush()
    start = time.perf_counter()
    i = 1
    while time.perf_counter() - start < seconds:
        proc.stdin.write(body[i % len(body)])
        proc.stdin.flush()
        i += 1
        time.sleep(max(0.0, start + i / fps - time.perf_counter()))
    proc.stdin.close()
    proc.wait(300)
    reader.join(30)
    out = figures(err[0].decode())
    out["sent"] = i
    return out


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def page(model: list[str], fps: int, seconds: float) -> dict:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return {"skipped": "no chromium here (apt-get install chromium)"}
    header, body = y4m(list(sample_frames(60, 320, 240)), fps)
    with tempfile.TemporaryDirectory() as tmp:
        camera = Path(tmp) / "camera.y4m"
        camera.write_bytes(header + b"".join(body))
        port = _port()
        argv = [sys.executable, "-m", "stdtrt", "live", *model, "--prompt", "an oil painting", "--source", "web",
                "--sink", "web", "--port", str(port)]  # fmt: skip
        proc = subprocess.Popen(argv, stderr=subprocess.PIPE, env=env())
        err: list[bytes] = []
        reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
        reader.start()
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 300
        while True:  # the page answers once the model is loaded (/stats says "generation")
            try:
                if "generation" in json.loads(urllib.request.urlopen(url + "stats", timeout=2).read()):
                    break
            except OSError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise SystemExit("stdtrt live did not start")
            time.sleep(0.5)
        browser = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
             "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={camera}",
             f"--user-data-dir={tmp}/profile", url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(seconds)
            stats = json.loads(urllib.request.urlopen(url + "stats", timeout=10).read())
            urllib.request.urlopen(urllib.request.Request(url + "stop", b"{}"), timeout=10).read()
            proc.wait(120)
        finally:
            browser.terminate()
            browser.wait(30)
        reader.join(30)
    out = figures(err[0].decode())
    out["dropped_total_on_the_page"] = stats.get("dropped")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny-sd,random-sd15")
    ap.add_argument("--paths", default="pipe,page")
    ap.add_argument("--fps", type=int, default=30, help="the source's frame rate")
    ap.add_argument("--seconds", type=float, default=30)
    args = ap.parse_args()
    rows = []
    for name in args.models.split(","):
        for path in args.paths.split(","):
            fn = pipe if path == "pipe" else page
            result = {
                "model": name,
                "path": path,
                "args": MODELS[name],
                **fn(MODELS[name], args.fps, args.seconds),
            }
            print(json.dumps(result), flush=True)
            rows.append(result)
    where = machine()
    slug = re.sub(r"[^a-z0-9]+", "-", where.lower()).strip("-")[:60]
    out = ROOT / "benchmarks" / "results" / f"live-latency-{slug}"
    lines = [f"stdtrt live, source at {args.fps} fps for {args.seconds:g} s, torch on the CPU ({where})",
             "| model | path | fps out | latency p50 | p95 | frames | dropped |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['path']} | skipped: {r['skipped']} | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['path']} | {r['fps']:.2f} | {r['p50_ms']} ms | {r['p95_ms']} ms | "
                     f"{r['frames']} | {r['dropped']} |")  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps({"machine": where, "fps": args.fps, "seconds": args.seconds,
                                                    "rows": rows}, indent=2) + "\n")  # fmt: skip
    out.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
