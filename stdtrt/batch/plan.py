"""What a batch job will do, decided before anything is written: the inputs (a folder searched recursively,
a text file of paths, or paths), the output each gets under the output folder (its relative path kept),
the units (a whole video, or segments of a long one and their join) and the key of the settings.

Every check that can refuse the job runs here, so a refused job writes nothing: an output folder inside
an input folder, two inputs that would write the same output, an output folder that cannot be written, a
segment shorter than the stream's warm-up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from stdtrt.config import BatchConfig, StylizeConfig
from stdtrt.errors import StdtrtError
from stdtrt.io.atomic import check_writable_dir
from stdtrt.io.hashing import file_hash
from stdtrt.io.video import CONTAINERS, VIDEO_SUFFIXES

STATE_DIR = ".stdtrt-batch"  # in the output folder: segments' frames until they are joined
RECORD = "stdtrt-batch.jsonl"  # in the output folder: the job record


@dataclass(frozen=True)
class Source:
    path: Path  # the input, absolute
    rel: Path  # where its output goes under the output folder (suffix changed where needed)


@dataclass(frozen=True)
class Unit:
    """A video, a segment of one, or the join of a video's segments: what one worker call does."""

    id: str  # "REL" for a video, "REL#3" for its fourth segment, "REL#join"
    input: str
    output: str  # the final output (for a segment: the video's, which the join writes)
    kind: str = "video"  # "video", "segment" or "join"
    index: int = 0  # the segment's number
    first: int = 0  # a segment's first frame in the video
    end: int | None = None  # one past its last frame (None: to the video's end)
    warm: int = 0  # frames before `first` run to rebuild the stream's state, their outputs dropped
    part: str = ""  # a segment's frames (raw RGB at the working size), until the join
    parts: tuple[str, ...] = ()  # the join's segments, in order
    frames: int = 0  # frames this unit writes, as far as the probe knows (progress)


def gather(sources: list[str], output: Path) -> list[Source]:
    """The inputs: one folder (its videos, recursively), one text file of paths (one per line, `#`
    comments; relative ones from the file's folder), or paths of videos and folders."""
    if not sources:
        raise StdtrtError("no input: pass a folder of videos, a text file of paths, or video files")
    found: list[Source] = []
    for text in sources:
        path = Path(text)
        if path.is_dir():
            videos = sorted(
                p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )  # fmt: skip
            if not videos:
                raise StdtrtError(f"input folder {path} holds no videos ({', '.join(VIDEO_SUFFIXES)})")
            top = Path(path.name) if len(sources) > 1 else Path()
            found += [Source(p.absolute(), _out_name(top / p.relative_to(path))) for p in videos]
        elif path.suffix.lower() == ".txt" and path.is_file():
            found += _listed(path)
        elif path.is_file():
            found.append(Source(path.absolute(), _out_name(Path(path.name))))
        else:
            raise StdtrtError(f"input {path} does not exist")
    _check_outputs(found, sources, output)
    return found


def _listed(listing: Path) -> list[Source]:
    out = []
    for n, line in enumerate(listing.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line) if Path(line).is_absolute() else listing.parent / line
        if not path.is_file():
            raise StdtrtError(f"{listing}:{n}: {line} is not a file")
        try:
            rel = path.absolute().relative_to(listing.parent.absolute())
        except ValueError:
            rel = Path(path.name)
        out.append(Source(path.absolute(), _out_name(rel)))
    if not out:
        raise StdtrtError(f"{listing} lists no videos")
    return out


def _out_name(rel: Path) -> Path:
    """The input's relative path; a suffix stdtrt cannot write (.avi) becomes .mp4."""
    return rel if rel.suffix.lower() in CONTAINERS else rel.with_suffix(".mp4")


def _check_outputs(found: list[Source], sources: list[str], output: Path) -> None:
    out = output.absolute().resolve()
    for text in sources:
        folder = Path(text).absolute().resolve()
        if Path(text).is_dir() and (out == folder or folder in out.parents):
            raise StdtrtError(
                f"output folder {output} is inside the input folder {text}: a rerun would take the outputs "
                f"for inputs; choose an output folder outside it"
            )
    seen: dict[Path, Path] = {}
    for s in found:
        key = Path(str(s.rel).lower())  # case-insensitive file systems would merge them too
        if key in seen:
            raise StdtrtError(f"inputs {seen[key]} and {s.path} would both write {output / s.rel}")
        seen[key] = s.path
        if s.path.resolve() == (out / s.rel).resolve():
            raise StdtrtError(f"output {output / s.rel} is the input itself")
    check_writable_dir(output)


# -- the settings' key ---------------------------------------------------------------------------------------
_NOT_IN_OUTPUT = {"explicit", "queue_size", "verify", "trust_unvalidated"}  # change how, not what


def settings_key(cfg: StylizeConfig) -> str:
    """sha256 of every setting that shapes the output, with the contents of the files they name (LoRA,
    style image, the bundle's manifest, which holds its graphs' hashes): a changed setting is redone."""
    values = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_IN_OUTPUT}
    for name in ("lora", "style_image"):
        if values.get(name) and Path(values[name]).is_file():
            values[name + "_sha256"] = file_hash(values[name])
    bundle = cfg.bundle or (None if cfg.model else "stdtrt-engine")
    if bundle and (Path(bundle) / "manifest.json").is_file():
        values["bundle_manifest_sha256"] = file_hash(Path(bundle) / "manifest.json")
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- segments ------------------------------------------------------------------------------------------------
def warm_up(cfg: StylizeConfig) -> tuple[int, int]:
    """(frames before a segment's first that rebuild the stream's state, the group size a segment's start
    must be a multiple of). The per-frame student's stream holds NFE slots of B frames: a frame's
    trajectory depends on its own content and the video's noise only, and the frames beside it in a UNet
    call are the NFE - 1 groups before it; running those first makes every call of the segment the call of
    the whole video's run. Refused where the state reaches further back (one line each)."""
    from stdtrt.bundle.manifest import read_bundle
    from stdtrt.bundle.variant import asks_for_video
    from stdtrt.config import DEFAULT_BUNDLE

    bundle = read_bundle(cfg.bundle or DEFAULT_BUNDLE) if cfg.bundle or not cfg.model else None
    nfe, batch = (bundle.nfe, bundle.batch) if bundle is not None else (cfg.nfe, cfg.frames_per_step)
    why = None
    if asks_for_video(cfg, bundle):
        why = "the video student's windows (not yet: run such videos whole)"
    elif cfg.cache_frames or (bundle is not None and bundle.cache):
        why = (
            "cached attention: each layer attends to the frames before, whose features attended to theirs, "
            "so the state reaches back through every layer (not rebuilt exactly from a few frames)"
        )
    elif cfg.skip_threshold is not None:
        why = "--skip-threshold: whether a frame is skipped depends on every frame since the last one run"
    elif cfg.gamma > 0:
        why = "--gamma > 0: the re-noising draws from one generator over the whole video"
    elif cfg.control_video:
        why = "--control-video"
    if why:
        raise StdtrtError(f"--segment-seconds cannot cut a video run with {why}")
    return (nfe - 1) * batch, batch


def segments(source: Source, info, cfg: BatchConfig, state: Path, key: str) -> list[Unit]:
    """The units of one input: the whole video, or (--segment-seconds, when it is longer) its segments
    and their join. A segment is a multiple of the stream's group and at least its warm-up long."""
    out = str(Path(cfg.output).absolute() / source.rel)
    rel = str(source.rel)
    seconds = cfg.segment_seconds
    if seconds is None or not info.frames:
        return [Unit(rel, str(source.path), out, frames=info.frames)]
    warm, group = warm_up(cfg.stylize)
    length = int(seconds * info.rate) // group * group
    if length < max(warm, 1):
        raise StdtrtError(
            f"--segment-seconds {seconds:g} is {length} frames of {source.path} ({float(info.rate):g} fps), "
            f"shorter than the stream's warm-up of {warm} frames: use at least "
            f"{math.ceil(max(warm, group) / info.rate * 100) / 100:g} s"
        )
    if info.frames <= length:
        return [Unit(rel, str(source.path), out, frames=info.frames)]
    tag = hashlib.sha256(f"{source.path}|{key}".encode()).hexdigest()[:16]
    units = []
    for i, first in enumerate(range(0, info.frames, length)):
        last = first + length >= info.frames
        units.append(
            Unit(
                f"{rel}#{i}", str(source.path), out, "segment", i, first, None if last else first + length,
                min(warm, first), str(state / tag / f"{i:05d}.rgb"),
                frames=(info.frames - first) if last else length,
            )
        )  # fmt: skip
    join = Unit(f"{rel}#join", str(source.path), out, "join", parts=tuple(u.part for u in units))
    return [*units, join]
