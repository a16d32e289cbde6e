"""What a hostile trial as a new user found (issue 19), case by case, on media made here: PyAV, the ffmpeg
command line (a second, independent tool; .ci/run installs it) and MP4 boxes patched by hand. Orientation is
checked against pixels derived from the file format's own definition, never read back through the code
under test; a full disk and a read-only folder are real ones (a tmpfs in a private mount namespace)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import frames_of, make_video, small

from stdtrt.config import ExportConfig, StylizeConfig
from stdtrt.errors import StdtrtError

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="the ffmpeg command line is not installed")
STDTRT = [sys.executable, "-m", "stdtrt"]


def _stdtrt(args, cwd, **kwargs):
    return subprocess.run(STDTRT + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, **kwargs)


def _one_error_line(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


def _ffmpeg(*args):
    subprocess.run([FFMPEG, "-loglevel", "error", "-y", *map(str, args)], check=True)


# -- 1. export and distill replace only what they wrote ----------------------------------------------------
def _precious(folder: Path) -> dict:
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "photos").mkdir()
    (folder / "photos" / "a.jpg").write_bytes(b"jpeg")
    (folder / ".ssh").mkdir()
    (folder / ".ssh" / "id").write_text("key")
    (folder / ".bashrc").write_text("alias")
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _contents(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_export_never_replaces_a_folder_that_is_not_a_bundle(flags, tmp_path):
    home = tmp_path / "home"
    before = _precious(home)
    proc = _stdtrt(["export", "--model", "tiny-sd", "--out", home, *flags], tmp_path)
    line = _one_error_line(proc)
    assert "not part of an stdtrt bundle" in line and "notes.txt" in line
    assert _contents(home) == before and sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_export_into_the_current_folder_is_refused_before_any_work(tmp_path):
    here = tmp_path / "bundle-here"
    here.mkdir()
    for out in (".", str(here), str(tmp_path)):
        line = _one_error_line(_stdtrt(["export", "--model", "tiny-sd", "--out", out], here))
        assert "is the folder you are in" in line
    assert not any(here.iterdir()) and sorted(p.name for p in tmp_path.iterdir()) == ["bundle-here"]


def test_distill_overwrite_never_deletes_what_no_run_wrote(data_dir, tmp_path):
    from stdtrt.distill.trainer import distill

    out = tmp_path / "run"
    distill(small(data_dir, out, max_steps=1), progress=False)
    (out / "notes.txt").write_text("mine")
    before = _contents(out)
    with pytest.raises(StdtrtError, match="not part of a stdtrt run.*notes.txt"):
        distill(small(data_dir, out, max_steps=1), overwrite=True, progress=False)
    assert _contents(out) == before


def _cut_video(path: Path) -> Path:
    """A video that opens and whose first frame decodes (it passes the data check) but that stops midway."""
    full = make_video(path.with_name("full.mp4"), frames=24, size=(48, 40), audio=False, faststart=True)
    path.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.6)])
    full.unlink()
    return path


def test_a_run_that_fails_before_its_first_step_leaves_nothing_and_keeps_the_old_one(data_dir, tmp_path):
    from stdtrt.distill.trainer import distill

    bad = tmp_path / "bad-data"
    bad.mkdir()
    _cut_video(bad / "clip.mp4")  # fails while its frames are extracted, inside the run
    out = tmp_path / "run"
    with pytest.raises(StdtrtError, match="truncated|corrupt"):
        distill(small(bad, out, max_steps=1), progress=False)
    assert not out.exists()  # the fixed rerun is not blocked by "already holds a run"
    distill(small(data_dir, out, max_steps=1), progress=False)
    old = _contents(out)
    with pytest.raises(StdtrtError, match="truncated|corrupt"):
        distill(small(bad, out, max_steps=1), overwrite=True, progress=False)
    assert _contents(out) == old  # a failed --overwrite gives the old run back


def test_a_truncated_jpeg_is_refused_before_training(tmp_path):
    from PIL import Image

    from stdtrt.distill.trainer import distill

    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(data / "a.jpg")
    (data / "a.jpg").write_bytes((data / "a.jpg").read_bytes()[:-300])  # cut: its header still parses
    with pytest.raises(StdtrtError, match=r"unreadable files in the data folder: .*a\.jpg.*truncated"):
        distill(small(data, tmp_path / "run", max_steps=1), progress=False)
    assert not (tmp_path / "run").exists()


def test_resume_without_a_finished_checkpoint_says_it_starts_again(data_dir, tmp_path, caplog):
    from stdtrt.distill.trainer import distill

    out = tmp_path / "run"
    distill(small(data_dir, out, max_steps=1), progress=False)
    shutil.rmtree(out / "checkpoints")  # as if it had been stopped before its first checkpoint
    with caplog.at_level("WARNING", logger="stdtrt"):
        result = distill(small(data_dir, out, max_steps=1), resume=True, progress=False)
    assert result.steps == 1 and "no finished checkpoint" in caplog.text and "from step 0" in caplog.text


# -- 2. a trimmed file is not truncated ---------------------------------------------------------------------
@needs_ffmpeg
def test_a_trim_by_stream_copy_is_stylized_whole(tmp_path):
    from stdtrt.io.video import probe
    from stdtrt.runtime.stylize import stylize_video

    long = tmp_path / "long.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=12", "-t", "3.5", "-c:v", "libx264", "-g", "12",
            "-pix_fmt", "yuv420p", long)  # fmt: skip
    trim = tmp_path / "trim.mp4"
    _ffmpeg("-ss", "0.5", "-i", long, "-c", "copy", trim)
    with av.open(str(trim)) as c:
        header, decoded = c.streams.video[0].frames, sum(1 for _ in c.decode(video=0))
    assert header > decoded  # the header counts samples the edit list does not show
    assert probe(trim).frames == decoded
    result = stylize_video(StylizeConfig(model="tiny-sd"), trim, tmp_path / "out.mp4", progress=False)
    assert result.frames == decoded == len(frames_of(result.output))


# -- 3. display matrices: rotations, mirrors and transposes -------------------------------------------------
def _boxes(data: bytes, start: int, end: int):
    while start + 8 <= end:
        size, kind = struct.unpack(">I4s", data[start : start + 8])
        size = size or end - start
        yield kind.decode("latin-1"), start, start + size
        start += size


def _with_matrix(src: Path, dst: Path, abcd: tuple[int, int, int, int]) -> None:
    """Write `src` to `dst` with its video track header's matrix set to [a b 0; c d 0; 0 0 1] (ISO/IEC
    14496-12 8.3.2, 16.16 fixed point): a hand edit of the file, independent of FFmpeg's writer."""
    data = bytearray(src.read_bytes())
    moov = next((s, e) for k, s, e in _boxes(data, 0, len(data)) if k == "moov")
    for kind, s, e in _boxes(data, moov[0] + 8, moov[1]):
        if kind != "trak":
            continue
        tkhd = next((ts, te) for k, ts, te in _boxes(data, s + 8, e) if k == "tkhd")
        at = tkhd[0] + (60 if data[tkhd[0] + 8] == 1 else 48)  # version 1 has 64-bit times
        a, b, c, d = abcd
        data[at : at + 36] = struct.pack(">9i", a << 16, b << 16, 0, c << 16, d << 16, 0, 0, 0, 1 << 30)
    dst.write_bytes(bytes(data))


def _expected(coded: np.ndarray, abcd) -> np.ndarray:
    """Where the file format puts each coded pixel (x, y): at (a x + c y, b x + d y), shifted into view."""
    a, b, c, d = abcd
    h, w = coded.shape[:2]
    y, x = np.mgrid[0:h, 0:w]
    px, py = a * x + c * y, b * x + d * y
    px, py = px - px.min(), py - py.min()
    out = np.zeros((py.max() + 1, px.max() + 1, 3), np.uint8)
    out[py, px] = coded[y, x]
    return out


def _pattern(w: int = 48, h: int = 32) -> np.ndarray:
    """Four solid quadrants and a stripe: no two of the eight orientations look alike."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[: h // 2, : w // 2] = (230, 30, 30)
    rgb[: h // 2, w // 2 :] = (30, 230, 30)
    rgb[h // 2 :, : w // 2] = (30, 30, 230)
    rgb[h // 2 :, w // 2 :] = (230, 230, 30)
    rgb[: h // 8, : w // 4] = (255, 255, 255)
    return rgb


ORIENTATIONS = {  # (a, b, c, d) of the display matrix
    "upright": (1, 0, 0, 1),
    "mirror-x": (-1, 0, 0, 1),  # ffprobe says rotation -180 for it
    "mirror-y": (1, 0, 0, -1),
    "turn-180": (-1, 0, 0, -1),
    "turn-cw": (0, 1, -1, 0),  # a phone's portrait clip
    "turn-ccw": (0, -1, 1, 0),
    "transpose": (0, 1, 1, 0),
    "antitranspose": (0, -1, -1, 0),
}


@pytest.fixture(scope="module")
def coded_clip(tmp_path_factory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("orient") / "plain.mp4"
    pattern = _pattern()
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 48, 32, "yuv444p"
        s.options = {"crf": "0"}
        for i in range(2):
            f = av.VideoFrame.from_ndarray(pattern, format="rgb24")
            f.pts = i
            c.mux(s.encode(f.reformat(format="yuv444p")))
        c.mux(s.encode(None))
    with av.open(str(path)) as c:  # what the codec gives back, before any orientation
        decoded = next(c.decode(video=0)).to_ndarray(format="rgb24")
    return path, decoded


@pytest.mark.parametrize("name", list(ORIENTATIONS))
def test_every_display_matrix_is_applied_as_players_apply_it(name, coded_clip, tmp_path):
    from stdtrt.io.video import probe, read_frames

    plain, decoded = coded_clip
    clip = tmp_path / f"{name}.mp4"
    _with_matrix(plain, clip, ORIENTATIONS[name])
    info = probe(clip)
    frame, _ = next(read_frames(info))
    expected = _expected(decoded, ORIENTATIONS[name])
    assert frame.shape == expected.shape and (info.width, info.height) == expected.shape[1::-1]
    error = np.abs(frame.astype(int) - expected).mean()
    others = [np.abs(frame.astype(int) - _expected(decoded, m)).mean() for m in ORIENTATIONS.values()
              if _expected(decoded, m).shape == frame.shape and m != ORIENTATIONS[name]]  # fmt: skip
    assert error < 3 and min(others) > 20, (error, others)


@needs_ffmpeg
@pytest.mark.parametrize("name", ["turn-cw", "turn-ccw", "turn-180"])
def test_rotations_read_as_ffmpeg_shows_them(name, coded_clip, tmp_path):
    from stdtrt.io.video import probe, read_frames

    clip = tmp_path / f"{name}.mp4"
    _with_matrix(coded_clip[0], clip, ORIENTATIONS[name])
    info = probe(clip)
    raw = subprocess.run([FFMPEG, "-loglevel", "error", "-i", clip, "-frames:v", "1", "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout  # fmt: skip
    theirs = np.frombuffer(raw, np.uint8).reshape(info.height, info.width, 3)
    ours, _ = next(read_frames(info))
    assert np.abs(ours.astype(int) - theirs).mean() < 3


def test_stylized_output_is_upright_without_a_matrix(coded_clip, tmp_path):
    from stdtrt.io.video import Orientation, probe
    from stdtrt.runtime.stylize import stylize_video

    clip = tmp_path / "mirror.mp4"
    _with_matrix(coded_clip[0], clip, ORIENTATIONS["turn-cw"])
    result = stylize_video(StylizeConfig(model="tiny-sd"), clip, tmp_path / "out.mp4", progress=False)
    out = probe(result.output)
    assert (out.width, out.height) == (32, 48) and out.orientation == Orientation()


# -- 4. a stream that changes size midway --------------------------------------------------------------------
@needs_ffmpeg
@pytest.mark.parametrize("size", [None, (96, 64)])
def test_a_stream_that_changes_size_midway(size, tmp_path, caplog):
    from stdtrt.runtime.stylize import stylize_video

    parts = []
    for i, (w, h) in enumerate([(96, 64), (64, 64)]):  # 3:2, then square
        part = tmp_path / f"part{i}.ts"
        _ffmpeg("-f", "lavfi", "-i", f"color=c=white:size={w}x{h}:rate=8", "-t", "1", "-c:v", "libx264",
                "-pix_fmt", "yuv420p", part)  # fmt: skip
        parts.append(part)
    joined = tmp_path / "joined.ts"
    _ffmpeg("-i", f"concat:{parts[0]}|{parts[1]}", "-c", "copy", joined)
    extra = {} if size is None else {"width": size[0], "height": size[1]}
    with caplog.at_level("WARNING", logger="stdtrt"):
        result = stylize_video(
            StylizeConfig(model="tiny-sd", **extra), joined, tmp_path / "out.mp4", progress=False
        )
    frames = frames_of(result.output)
    assert len(frames) == 16 and frames[0].shape == (64, 96, 3) and "changes size" in caplog.text
    square = frames[-1].astype(int)  # the 64x64 picture between black bars 16 pixels wide
    assert square[:, :14].max() < 30 and square[:, -14:].max() < 30 and square[:, 20:76].mean() > 40


# -- 5. OS errors: one line -------------------------------------------------------------------------------------
def _private_tmpfs(folder: Path, options: str) -> list[str] | None:
    """A command prefix that runs a command with a tmpfs of `options` mounted on `folder`, in a private mount
    namespace (nothing outside sees it); None where this machine does not allow one."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    probe = subprocess.run([unshare, "-m", "sh", "-c", f"mount -t tmpfs -o {options} tmpfs {folder}"],
                           capture_output=True)  # fmt: skip
    if probe.returncode:
        return None
    return [unshare, "-m", "sh", "-c", f'mount -t tmpfs -o {options} tmpfs {folder} && exec "$@"', "sh"]


def _in_tmpfs(folder: Path, options: str, args, cwd):
    prefix = _private_tmpfs(folder, options)
    if prefix is None:
        pytest.skip("no private tmpfs here (unshare -m and mount not permitted)")
    return subprocess.run(prefix + STDTRT + [str(a) for a in args], capture_output=True, text=True, cwd=cwd)


def test_a_full_disk_is_one_line_and_keeps_the_old_output(tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=24, size=(256, 192), audio=False)
    disk = tmp_path / "disk"
    disk.mkdir()
    args = ["stylize-video", src, "-o", disk / "out.mp4", "--model", "tiny-sd", "--width", "64", "--height", "48",
            "--crf", "0", "--no-progress"]  # fmt: skip
    if _private_tmpfs(disk, "size=40k") is None:
        pytest.skip("no private tmpfs here (unshare -m and mount not permitted)")
    # inside the namespace: the small disk, an earlier output on it, the run, then what the disk holds
    script = (f"mount -t tmpfs -o size=40k tmpfs {disk} && printf previous > {disk}/out.mp4 && ls -a {disk} > "
              f'{tmp_path}/before && "$@"; code=$?; ls -a {disk} > {tmp_path}/after; cat {disk}/out.mp4 > '
              f"{tmp_path}/kept; exit $code")  # fmt: skip
    proc = subprocess.run([shutil.which("unshare"), "-m", "sh", "-c", script, "sh", *STDTRT, *map(str, args)],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    line = _one_error_line(proc)
    assert "No space left on device" in line and "free some space" in line
    assert (tmp_path / "kept").read_text() == "previous"  # the old output untouched
    assert (tmp_path / "after").read_text() == (tmp_path / "before").read_text()  # no partial left


@pytest.mark.parametrize("command", ["export", "distill"])
def test_a_read_only_folder_is_one_line(command, data_dir, tmp_path):
    place = tmp_path / "ro"
    place.mkdir()
    args = {"export": ["export", "--model", "tiny-sd", "--out", place / "bundle"],
            "distill": ["distill", "--model", "tiny-sd", "--data", data_dir, "--out", place / "run"]}[command]  # fmt: skip
    proc = _in_tmpfs(place, "ro", args, tmp_path)
    line = _one_error_line(proc)
    assert str(place) in line and ("Read-only file system" in line or "not writable" in line)


def test_os_errors_read_as_one_line():
    import errno

    from stdtrt.cli_exit import os_error_line

    line = os_error_line(OSError(errno.ENOSPC, "No space left on device", "/data/out.mp4"))
    assert line == "No space left on device (/data/out.mp4); free some space and run again"


# -- 6. long prompts -------------------------------------------------------------------------------------------
def test_a_prompt_past_the_text_encoder_is_said_with_what_is_dropped(tiny_sd, caplog):
    import re

    from stdtrt.models.conditioning import encode_prompt

    prompt = "an oil painting of a harbour at dusk, " * 8 + "in winter"
    ids = tiny_sd.pipe.tokenizer(prompt, verbose=False).input_ids  # counted here, by the tokenizer itself
    with caplog.at_level("WARNING", logger="stdtrt"):
        encode_prompt(tiny_sd.pipe, prompt, 64, 64)
        encode_prompt(tiny_sd.pipe, prompt, 64, 64)  # said once
    assert caplog.text.count("tokens more than") == 1
    assert f"{len(ids) - 77} tokens more than the 75" in caplog.text
    excerpt = re.search(r"from '(.*?)(\.\.\.)?' on", caplog.text).group(1)
    assert excerpt.replace(" ", "") in prompt.replace(" ", "")[20:]  # where the cut begins, past the start


# -- 9. EXIF orientation ---------------------------------------------------------------------------------------
def test_exif_orientation_is_applied_to_every_image_read(tmp_path):
    from PIL import Image

    from stdtrt.io.images import read_image
    from stdtrt.runtime.stylize import stylize_image

    upright = _pattern(64, 96)  # portrait, as the camera saw it
    stored = np.rot90(upright, 1)  # orientation 6: the stored rows are the picture's right-hand side
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(np.ascontiguousarray(stored)).save(path, exif=exif, quality=95)
    assert np.abs(read_image(path).astype(int) - upright).mean() < 4
    out = stylize_image(StylizeConfig(model="tiny-sd"), path, tmp_path / "out.jpg")
    with Image.open(out) as im:
        assert im.size == (64, 96) and im.getexif().get(0x0112) in (None, 1)


# -- 10. said in one line, and colours as ffmpeg converts them ---------------------------------------------------
def test_two_runs_writing_one_output_the_second_is_refused(tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=300, size=(64, 48), audio=False)
    out = tmp_path / "out.mp4"
    first = subprocess.Popen(STDTRT + ["stylize-video", str(src), "-o", str(out), "--model", "tiny-sd", "--no-progress"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)  # fmt: skip
    try:
        import time

        deadline = time.monotonic() + 120
        while not any(".partial" in p.name for p in tmp_path.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.2)
        second = _stdtrt(["stylize-video", src, "-o", out, "--model", "tiny-sd"], tmp_path)
        assert "another stdtrt run" in _one_error_line(second) and first.poll() is None
    finally:
        first.terminate()
        first.wait(60)


def test_bit_depth_and_alpha_are_said(tmp_path, caplog):
    from stdtrt.runtime.stylize import stylize_video

    clip = tmp_path / "alpha10.mkv"
    with av.open(str(clip), "w") as c:  # FFV1 keeps 10 bits and an alpha plane
        s = c.add_stream("ffv1", rate=8)
        s.width, s.height, s.pix_fmt = 64, 48, "yuva444p10le"
        for i in range(3):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 4), 128, np.uint8), format="rgba")
            f.pts = i
            c.mux(s.encode(f.reformat(format="yuva444p10le")))
        c.mux(s.encode(None))
    with caplog.at_level("WARNING", logger="stdtrt"):
        stylize_video(StylizeConfig(model="tiny-sd"), clip, tmp_path / "out.mp4", progress=False)
    assert "is 10-bit" in caplog.text and "alpha channel" in caplog.text


@needs_ffmpeg
@pytest.mark.parametrize("matrix,rng", [("bt709", "tv"), ("bt470bg", "pc")])
def test_ten_bit_colours_are_read_as_ffmpeg_reads_them(matrix, rng, tmp_path):
    from stdtrt.io.video import probe, read_frames

    enc = subprocess.run([FFMPEG, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    if "libx265" not in enc:
        pytest.skip("this ffmpeg has no libx265 encoder")
    src = tmp_path / "src.rgb"
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=128x96:rate=8",
        "-t",
        "0.5",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        src,
    )
    clip = tmp_path / "hevc10.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=128x96:rate=8", "-t", "0.5",
            "-vf", f"scale=out_color_matrix={matrix}:out_range={rng},format=yuv420p10le", "-c:v", "libx265",
            "-x265-params", "log-level=error", "-colorspace", matrix, "-color_range", rng, clip)  # fmt: skip
    truth = np.frombuffer(src.read_bytes(), np.uint8).reshape(-1, 96, 128, 3).astype(int)
    raw = subprocess.run([FFMPEG, "-loglevel", "error", "-i", clip, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout  # fmt: skip
    theirs = np.frombuffer(raw, np.uint8).reshape(-1, 96, 128, 3).astype(int)
    ours = np.stack([rgb for rgb, _ in read_frames(probe(clip))]).astype(int)
    assert np.abs(ours - truth).mean() <= np.abs(theirs - truth).mean() + 0.25


@needs_ffmpeg
def test_the_output_is_tagged_with_the_colour_it_was_written_in(video, tmp_path):
    from stdtrt.runtime.stylize import stylize_video

    result = stylize_video(StylizeConfig(model="tiny-sd"), video, tmp_path / "out.mp4", progress=False)
    probe = subprocess.run([shutil.which("ffprobe"), "-v", "error", "-select_streams", "v:0", "-show_entries",
                            "stream=color_space,color_range,color_primaries,color_transfer", "-of", "json",
                            result.output], capture_output=True, text=True, check=True)  # fmt: skip
    tags = json.loads(probe.stdout)["streams"][0]
    assert tags["color_space"] == "bt709" and tags["color_range"] == "tv"


def test_a_bundle_of_another_aspect_fits_the_video_between_bars(tmp_path, caplog):
    from stdtrt.export.export import export_bundle
    from stdtrt.io.images import fit_box, letterbox, unletterbox
    from stdtrt.runtime.stylize import stylize_video

    picture = _pattern(96, 64)
    boxed = letterbox(picture, 64, 64)
    assert fit_box((96, 64), (64, 64)) == (0, 10, 64, 43)  # 64 * 64 / 96 = 42.7 rows, centred
    assert boxed[:10].max() == 0 == boxed[-10:].max()
    assert np.abs(unletterbox(boxed, (96, 64)).astype(int) - picture).mean() < 12  # one way and back
    bundle = tmp_path / "square"
    export_bundle(ExportConfig(model="tiny-sd", out=str(bundle), width=64, height=64, validate=False,
                               tensorrt=False), progress=False)  # fmt: skip
    src = make_video(tmp_path / "in.mp4", frames=3, size=(96, 64), audio=False)
    with caplog.at_level("WARNING", logger="stdtrt"):
        cfg = StylizeConfig(bundle=str(bundle), trust_unvalidated=True)  # exported unvalidated, to save time
        result = stylize_video(cfg, src, tmp_path / "out.mp4", progress=False)
    assert "fitted in whole, its aspect kept" in caplog.text
    assert [f.shape for f in frames_of(result.output)] == [(64, 96, 3)] * 3


def test_the_frame_rate_survives_an_odd_time_base(tmp_path):
    """(The reader's one filter graph per format must not change timestamps.)"""
    from stdtrt.io.video import probe, read_frames

    clip = make_video(tmp_path / "in.mp4", frames=5, size=(64, 48), fps=Fraction(30000, 1001), audio=False)
    info = probe(clip)
    with av.open(str(clip)) as c:
        theirs = [f.pts for f in c.decode(video=0)]
    assert [pts for _, pts in read_frames(info)] == theirs
