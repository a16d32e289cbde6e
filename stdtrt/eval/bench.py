"""`stdtrt bench`: every usable backend on one bundle, per stage and end to end, against diffusers' own
img2img pipeline (TCD scheduler, the same weights, LoRA, timesteps, guidance and size) in the same run.

Per-stage times are measured inside the real video pipeline (runtime/stylize.run_video) on a generated
clip at the bundle's size: ms per call of video decode, VAE encode, UNet (one stream step), VAE decode,
video encode. End to end: the whole clip (fill and flush included) and the steady rate while frames
enter (steady_fps). The diffusers baseline gets the decoded frames from memory (no video I/O): the
comparison is conservative for stdtrt; forward hooks on its UNet and VAE say where its time goes.
"""

from __future__ import annotations

import json
import logging
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from stdtrt.bundle.manifest import read_bundle
from stdtrt.bundle.model import load_fused_model
from stdtrt.bundle.variant import variant_of
from stdtrt.config import DEFAULT_BUNDLE, BenchConfig, StylizeConfig, resolve_overlap
from stdtrt.errors import StdtrtError
from stdtrt.eval.baseline import diffusers_baseline
from stdtrt.io.atomic import atomic_path
from stdtrt.io.samples import sample_frames
from stdtrt.io.video import probe, read_frames, write_video
from stdtrt.models.control_maps import DEFAULT_DEPTH_MODEL, ControlMaps, MapSpec
from stdtrt.runtime.backends import ORDER, load_backend
from stdtrt.runtime.stream import StreamRunner
from stdtrt.runtime.stylize import run_video
from stdtrt.runtime.windows import WindowRunner

log = logging.getLogger(__name__)

STAGES = ("video_decode", "vae_encode", "unet", "vae_decode", "video_encode")
NETWORKS = ("vae_encode", "unet", "vae_decode")


@dataclass
class BackendRun:
    name: str
    describe: str
    load_s: float
    stages_ms: dict[str, float]  # ms per call
    fps: float  # the whole clip, pipe fill and flush included
    steady_fps: float  # while frames enter (see steady_fps())
    outside: float | None = None  # share of the clip's time outside the network calls (one-thread stages)
    peak_mb: float | None = None  # CUDA: the most device memory torch held during the clip
    clock: dict[str, str] = field(default_factory=dict)  # what timed each stage: "host" or "cuda events"
    calls: dict[str, int] = field(default_factory=dict)  # calls of each stage over the clip

    @property
    def network_ms(self) -> float:
        """VAE encode + one stream UNet step + VAE decode: the network time of one frame."""
        return sum(self.stages_ms.get(s, 0.0) for s in NETWORKS)

    @property
    def frame_ms(self) -> float:
        return 1000 / self.steady_fps if self.steady_fps else float("nan")


@dataclass
class BundleBench:
    """One bundle's rows: every backend that loaded, and diffusers' img2img on the same model and VAE."""

    setup: dict
    runs: list[BackendRun] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    baseline: dict | None = None  # diffusers img2img: ms_per_frame, fps, describe

    def ratio(self, run: BackendRun) -> float | None:
        return run.steady_fps / self.baseline["fps"] if self.baseline else None

    def as_dict(self) -> dict:
        runs = [
            {**asdict(r), "network_ms": r.network_ms, "frame_ms": r.frame_ms, "vs_diffusers": self.ratio(r)}
            for r in self.runs
        ]
        return {"setup": self.setup, "runs": runs, "skipped": self.skipped, "baseline": self.baseline}

    def table(self) -> str:
        s = self.setup
        cache = s.get("cache")
        cached = f", attention cache of {cache['frames']} frames ({cache['mb']:.1f} MB)" if cache else ""
        lines = [
            f"bench: {s['bundle']}: {s['model']} {s['width']}x{s['height']}, VAE {s['vae']}, nfe {s['nfe']}, "
            f"guidance {s['guidance']}, {s['precision']}{cached}, {s['frames']} frames on {s['machine']}",
            f"{'backend':<12} {'load s':>7} {'v.dec':>7} {'vae enc':>8} {'unet':>8} {'vae dec':>8} {'v.enc':>7} "
            f"{'net sum':>8} {'e2e/frm':>8} {'over':>6} {'fps':>6} {'clip fps':>8} {'vs diffusers':>12} {'outside':>8}",
        ]
        for r in self.runs:
            ms = [r.stages_ms.get(k, float("nan")) for k in STAGES]
            ratio = self.ratio(r)
            lines.append(
                f"{r.name:<12} {r.load_s:>7.1f} {ms[0]:>7.1f} {ms[1]:>8.1f} {ms[2]:>8.1f} {ms[3]:>8.1f} {ms[4]:>7.1f} "
                f"{r.network_ms:>8.1f} {r.frame_ms:>8.1f} {100 * (r.frame_ms / r.network_ms - 1):>5.1f}% "
                f"{r.steady_fps:>6.3f} {r.fps:>8.3f} {f'{ratio:.2f}x' if ratio else '-':>12} "
                f"{'-' if r.outside is None else f'{100 * r.outside:.1f}%':>8}"
                + ("" if r.peak_mb is None else f"  peak {r.peak_mb:.0f} MB")
                + (
                    f"  control maps {r.stages_ms['control_map']:.1f} ms"
                    if "control_map" in r.stages_ms
                    else ""
                )
            )
        if self.baseline:
            b = self.baseline
            st = b["stages_ms_per_frame"]
            net = sum(st.values())
            lines.append(
                f"{'diffusers':<12} {'':>7} {'-':>7} {st['vae_encode']:>8.1f} {st['unet']:>8.1f} {st['vae_decode']:>8.1f} "
                f"{'-':>7} {net:>8.1f} {b['ms_per_frame']:>8.1f} {100 * (b['ms_per_frame'] / net - 1):>5.1f}% "
                f"{b['fps']:>6.3f}   ({b['describe']}; unet = {s['nfe']} calls of batch 1)"
            )
        lines.append(
            "ms per call; fps, e2e/frm: steady state (first written frame to the last one an input frame pushed "
            "out); clip fps: whole clip with fill and flush; over: e2e/frm vs net sum; outside: the clip's time "
            "outside network calls (backends whose networks run in one thread)"
        )
        lines += [f"skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


@dataclass
class BenchResult:
    """`stdtrt bench`: one BundleBench per bundle, side by side (e.g. the full and the tiny VAE)."""

    bundles: list[BundleBench] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"bundles": [b.as_dict() for b in self.bundles]}

    def table(self) -> str:
        return "\n\n".join(b.table() for b in self.bundles)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    text = f"{cpu} ({torch.get_num_threads()} threads)"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def make_clip(folder: Path, frames: int, width: int, height: int) -> Path:
    """A clip of real photographs at exactly the bundle's size (so nothing is resized)."""
    from fractions import Fraction

    path = folder / "bench-input.mp4"
    write_video(path, sample_frames(frames, width, height), Fraction(12))
    return path


def _warm_up(backend) -> None:
    """First calls allocate (onnxruntime arenas, cudnn plans): not what a video pays."""
    for name, args in backend.example_inputs().items():
        getattr(backend, name)(*args)


def time_backend(bundle, name: str, device: str, info, folder: Path, model=None) -> BackendRun:
    start = time.perf_counter()
    backend = load_backend(bundle, name, device, model=model)
    load_s = time.perf_counter() - start
    _warm_up(backend)
    cfg = StylizeConfig()
    # a video student's bundle runs as stylize-video runs it: windows overlapping by the default --overlap,
    # its noise by the rule it was distilled with
    variant = variant_of(bundle)
    window = variant.slot_frames if variant.windows else None
    control = bundle.manifest.control
    maps = None
    if control:  # its maps as stylize-video computes them (edges stand in for a control video's)
        spec = control["maps"]
        spec = MapSpec("canny") if spec["kind"] == "video" else MapSpec(spec["kind"], spec.get("low", 100),
                                                                          spec.get("high", 200), spec.get("model", DEFAULT_DEPTH_MODEL))  # fmt: skip
        maps = ControlMaps(spec, bundle.width, bundle.height, backend.device)
    runner = (
        WindowRunner(backend, window, resolve_overlap(window, None), cfg.seed, variant.noise_rule(False))
        if window
        else StreamRunner(backend, maps=maps)
    )
    cuda = backend.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(backend.device)
    result = run_video(runner, info, folder / f"out-{name}.mp4", cfg, progress=False)
    peak = torch.cuda.max_memory_allocated(backend.device) / 2**20 if cuda else None
    outside = None
    if not backend.concurrent_stages:  # one thread runs the networks: the rest of the clip's time is overhead
        network_s = sum(result.stage_seconds.get(s, 0.0) for s in NETWORKS)
        outside = 1 - network_s / result.seconds
    group = window - runner.overlap if window else 1  # frames one UNet call lets out
    return BackendRun(
        name,
        runner.describe() if window else backend.describe(),
        load_s,
        result.stages,
        result.fps,
        steady_fps(result, backend.plan.nfe, group),
        outside,
        peak,
        result.stage_clock,
        result.stage_calls,
    )


def steady_fps(result, nfe: int, group: int = 1) -> float:
    """Frames per second while frames still enter: from the first group of written frames to the group the
    last input frame pushed out. Frames leave `group` at a time (one a call; a video student's window
    less its overlap); the last nfe - 1 groups leave through flush calls (no VAE encode): not counted."""
    t = result.frame_times[: max(0, len(result.frame_times) - (nfe - 1) * group)]
    first = min(group, len(t)) - 1  # the first group's last frame: the rate counts frames after it
    if len(t) - 1 > first and t[-1] > t[first]:
        return (len(t) - 1 - first) / (t[-1] - t[first])
    return result.fps


def run_bench(cfg: BenchConfig) -> BenchResult:
    """Every bundle of cfg (the default folder when none), each on every backend, with its baseline."""
    result = BenchResult([bench_bundle(cfg, Path(path)) for path in (cfg.bundles or (DEFAULT_BUNDLE,))])
    if cfg.json:
        Path(cfg.json).write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    if cfg.plot:
        plot(result, Path(cfg.plot))
    return result


def bench_bundle(cfg: BenchConfig, path: Path) -> BundleBench:
    if not path.exists():
        raise StdtrtError(
            f"no bundle at {path}: make one with `stdtrt export --model ... --out {path}` first"
        )
    bundle = read_bundle(path, full=cfg.verify)
    if not bundle.validated:
        log.warning(
            "%s was exported with --no-validate: timed as it is (`stdtrt validate %s` checks it)", path, path
        )
    m = bundle.manifest
    unlike = (
        "a style image baked in"
        if m.style
        else "a video student's motion UNet"
        if variant_of(bundle).windows
        else "a ControlNet baked in"
        if m.control
        else None
    )
    if unlike and cfg.baseline:
        raise StdtrtError(
            f"bundle {path} has {unlike}, and the diffusers baseline does not run one yet: "
            f"pass --no-baseline to time its backends alone"
        )
    setup = {
        "model": m.model["name"], "width": bundle.width, "height": bundle.height, "nfe": bundle.nfe,
        "guidance": m.guidance, "precision": m.precision, "frames": cfg.frames, "machine": machine(),
        "torch": torch.__version__, "bundle": str(path), "vae": m.vae["spec"],
    }  # fmt: skip
    if bundle.cache:  # the state a cached bundle carries from frame to frame
        spec = next(i for i in m.graphs["unet"]["inputs"] if i["name"] == "cache")
        rows, size = spec["shape"]
        setup["cache"] = {
            **bundle.cache,
            "mb": rows * size * (2 if spec["dtype"] == "float16" else 4) / 2**20,
        }
    result = BundleBench(setup)
    model = None
    with tempfile.TemporaryDirectory(prefix="stdtrt-bench.") as tmp:
        info = probe(make_clip(Path(tmp), cfg.frames, bundle.width, bundle.height))
        for name in cfg.backends or ORDER:
            try:
                start = time.perf_counter()
                if name == "torch":  # the fused model is shared with the diffusers baseline
                    model = model or load_fused_model(bundle, cfg.device, full=cfg.verify)
                extra = time.perf_counter() - start
                run = time_backend(bundle, name, cfg.device, info, Path(tmp), model)
                run.load_s += extra
                result.runs.append(run)
                log.info("bench: %s: %.3f fps", run.describe, run.steady_fps)
            except StdtrtError as exc:
                result.skipped[name] = str(exc)
        if cfg.baseline:  # the same fused weights and the same VAE as the bundle
            model = model or load_fused_model(bundle, cfg.device, full=cfg.verify)
            frames = [rgb for rgb, _ in read_frames(info)]
            result.baseline = diffusers_baseline(model, bundle, frames)
    return result


def plot(result: BenchResult, path: Path) -> None:
    """Per backend: ms per frame end to end (steady state), and the ms of each stage's calls stacked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for one in result.bundles:
        label = f"{one.setup['vae']} VAE: " if len(result.bundles) > 1 else ""
        rows += [(label + r.name, r.stages_ms, r.frame_ms, r.steady_fps) for r in one.runs]
        if one.baseline:
            b = one.baseline
            rows.append(
                (label + "diffusers img2img", b.get("stages_ms_per_frame", {}), b["ms_per_frame"], b["fps"])
            )
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.9 * len(rows)))
    for i, (_, stages, frame_ms, fps) in enumerate(rows):
        left = 0.0
        for j, stage in enumerate(STAGES):
            ms = stages.get(stage, 0.0)
            ax.barh(i + 0.2, ms, height=0.38, left=left, color=f"C{j}", label=stage if i == 0 else None)
            left += ms
        ax.barh(
            i - 0.2, frame_ms, height=0.38, color="0.3", label="end to end, per frame" if i == 0 else None
        )
        ax.text(frame_ms, i - 0.2, f"  {fps:.3f} fps", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_xlabel("ms per frame (upper bar: each stage's calls; stages that overlap sum past the wall time)")
    s = result.bundles[0].setup
    ax.set_title(f"{s['model']} {s['width']}x{s['height']}, nfe {s['nfe']}: {s['machine']}", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
