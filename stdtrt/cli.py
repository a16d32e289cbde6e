"""The `stdtrt` command line. Each command parses its options into a config and calls ONE library function.

Nothing heavy is imported at module level: `stdtrt --help` does not import torch.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from stdtrt import __version__
from stdtrt.config import (
    BACKENDS,
    DEFAULT_BUNDLE,
    BenchConfig,
    DistillConfig,
    ExportConfig,
    StylizeConfig,
    defaults,
)
from stdtrt.errors import StdtrtError

S = defaults(StylizeConfig)
E = defaults(ExportConfig)
B = defaults(BenchConfig)


def _stylize_options(fn):
    """Options shared by stylize-image, stylize-video and demo; defaults come from StylizeConfig."""
    options = [
        click.option(
            "--model",
            "-m",
            default=S["model"],
            help="Run this model on the torch path without a bundle: diffusers folder, hub id in the local HF "
            "cache, single-file checkpoint, or a preset (tiny-sd, tiny-sdxl, random-sd15).",
        ),
        click.option(
            "--lora",
            default=S["lora"],
            type=click.Path(dir_okay=False),
            help="Distilled student LoRA (.safetensors).",
        ),
        click.option(
            "--bundle",
            default=S["bundle"],
            type=click.Path(file_okay=False),
            help=f"Exported engine bundle (stdtrt export) [default: ./{DEFAULT_BUNDLE} unless --model is given].",
        ),
        click.option("--prompt", "-p", default=S["prompt"], show_default=True, help="Style prompt."),
        click.option(
            "--negative-prompt",
            default=S["negative_prompt"],
            help="Negative prompt (only with --guidance > 1).",
        ),
        click.option(
            "--strength",
            type=float,
            default=S["strength"],
            show_default=True,
            help="Partial-noise level eta in (0, 1].",
        ),
        click.option(
            "--nfe",
            type=int,
            default=S["nfe"],
            show_default=True,
            help="Student steps (UNet evaluations per frame).",
        ),
        click.option(
            "--guidance",
            type=float,
            default=S["guidance"],
            show_default=True,
            help="Classifier-free guidance (1 = off).",
        ),
        click.option(
            "--gamma",
            type=float,
            default=S["gamma"],
            show_default=True,
            help="TCD stochasticity in [0, 1); 0 is deterministic.",
        ),
        click.option(
            "--seed", type=int, default=S["seed"], show_default=True, help="Seed of the (per-video) noise."
        ),
        click.option(
            "--width",
            type=int,
            default=S["width"],
            help="Working width (multiple of 8) [default: aspect-preserving, near the model's native size].",
        ),
        click.option("--height", type=int, default=S["height"], help="Working height (multiple of 8)."),
        click.option(
            "--backend",
            type=click.Choice(BACKENDS),
            default=S["backend"],
            show_default=True,
            help="Inference backend for a bundle (auto: tensorrt, then onnxruntime, then torch).",
        ),
        click.option("--device", default=S["device"], show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option(
            "--precision",
            type=click.Choice(["auto", "fp16", "fp32"]),
            default=S["precision"],
            show_default=True,
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _video_options(fn):
    options = [
        click.option(
            "--batch-size",
            type=int,
            default=S["batch_size"],
            show_default=True,
            help="Frames per UNet call (torch path).",
        ),
        click.option(
            "--fresh-noise",
            is_flag=True,
            default=S["fresh_noise"],
            help="New noise every frame (flickers; for comparisons).",
        ),
        click.option(
            "--crf",
            type=int,
            default=S["crf"],
            show_default=True,
            help="Output quality (H.264 CRF; lower is better).",
        ),
        click.option(
            "--queue-size",
            type=int,
            default=S["queue_size"],
            show_default=True,
            help="Frames buffered between stages.",
        ),
        click.option("--no-progress", is_flag=True, help="Hide the progress bar."),
        click.option(
            "--report", is_flag=True, help="Also measure the output's temporal consistency (warp error)."
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _config(kwargs: dict) -> StylizeConfig:
    from click.core import ParameterSource

    ctx = click.get_current_context()
    fields = {k: v for k, v in kwargs.items() if k in S and k != "explicit"}
    given = [k for k in fields if ctx.get_parameter_source(k) not in (None, ParameterSource.DEFAULT)]
    return StylizeConfig(**fields, explicit=tuple(given))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="stdtrt")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def cli(verbose: bool, quiet: bool) -> None:
    """stdtrt: few-step diffusion style transfer for images and video.

    \b
    Workflow:
      stdtrt distill ...         train a few-step LoRA student (Single Trajectory Distillation)
      stdtrt export ...          fuse it and build ONNX / TensorRT engines
      stdtrt stylize-video ...   stream a video through it
      stdtrt bench ...           time the backends against diffusers' img2img
    Try `stdtrt demo` first: it runs offline on the built-in tiny model.
    """
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("stdtrt").setLevel(level)


@cli.command()
def info() -> None:
    """Versions, devices, and which backends are usable here (and why not)."""
    from stdtrt.info import describe

    click.echo(describe())


@cli.command("stylize-image")
@click.argument("input", type=click.Path(dir_okay=False))
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output image (.png, .jpg, ...)."
)
@_stylize_options
def stylize_image_cmd(input: str, output: str, **kwargs) -> None:
    """Stylize one image in NFE student steps from the fixed partial-noise state."""
    from stdtrt.runtime.stylize import stylize_image

    path = stylize_image(_config(kwargs), input, output)
    click.echo(f"wrote {path}")


@cli.command("stylize-video")
@click.argument("input", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Output video (.mp4, .mov, .m4v, .mkv, .webm).",
)
@_stylize_options
@_video_options
def stylize_video_cmd(input: str, output: str, no_progress: bool, report: bool, **kwargs) -> None:
    """Stylize a video frame by frame, keeping its frame rate, size and audio."""
    from stdtrt.runtime.stylize import stylize_video

    result = stylize_video(_config(kwargs), input, output, progress=not no_progress)
    click.echo(
        f"wrote {result.output}: {result.frames} frames at {result.width}x{result.height}, "
        f"{result.fps:.2f} fps, audio {result.audio}"
    )
    if report:
        _echo_report(input, output)


def _echo_report(input, output) -> None:
    from stdtrt.eval.flicker import report as measure

    click.echo(str(measure(input, output)))


@cli.command()
@click.argument("input", type=click.Path(dir_okay=False))
@click.argument("output", type=click.Path(dir_okay=False))
def report(input: str, output: str) -> None:
    """Temporal consistency of a stylized OUTPUT video against its INPUT: the warp error between consecutive
    frames (flow from the input, occlusions masked), with the input's own warp error as the floor."""
    _echo_report(input, output)


@cli.command()
@click.option(
    "--out", default="stdtrt-demo", show_default=True, type=click.Path(file_okay=False), help="Output folder."
)
@click.option(
    "--frames", type=int, default=36, show_default=True, help="Frames of the sample video (12 fps)."
)
@_stylize_options
@_video_options
def demo(out: str, frames: int, no_progress: bool, report: bool, **kwargs) -> None:
    """Make a sample video from bundled photographs and stylize it (default: tiny-sd, offline)."""
    from stdtrt.demo import run_demo

    kwargs["model"] = kwargs["model"] or "tiny-sd"
    if not kwargs["prompt"]:
        kwargs["prompt"] = "an oil painting, thick brush strokes"
    result = run_demo(_config(kwargs), out, frames=frames, progress=not no_progress)
    source = result.output.parent / "input.mp4"
    click.echo(f"input:  {source}")
    click.echo(f"output: {result.output}")
    click.echo(
        f"{result.frames} frames at {result.width}x{result.height} on {kwargs['model']}: {result.fps:.2f} fps "
        f"end to end (decode, stylize, encode), audio {result.audio}"
    )
    if report:
        _echo_report(source, result.output)


def _dataclass_options(cls, renames: dict[str, str] | None = None):
    """One option per config field (default None = "not given"), help and default shown from the config."""
    import dataclasses

    renames = renames or {}

    def decorate(fn):
        for f in reversed(dataclasses.fields(cls)):
            flag = renames.get(f.name, "--" + f.name.replace("_", "-"))
            help_text = f"{f.metadata.get('help', '')} [default: {f.default}]".strip()
            if isinstance(f.default, bool):
                name = flag.removeprefix("--")
                no = renames.get(f.name + ":no", f"--no-{name}")
                fn = click.option(f"{flag}/{no}", f.name, default=None, help=help_text)(fn)
            elif isinstance(f.default, tuple):
                fn = click.option(flag, f.name, default=None, help=help_text + " (comma-separated)")(fn)
            else:
                kind = type(f.default) if f.default is not None else str
                fn = click.option(flag, f.name, type=kind, default=None, help=help_text)(fn)
        return fn

    return decorate


def _load_toml(path: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise StdtrtError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise StdtrtError(f"config file {path} is not valid TOML: {exc}") from None
    return {k.replace("-", "_"): v for k, v in raw.items()}


def build_distill_config(config_file: str | None, given: dict) -> DistillConfig:
    """Defaults < the TOML file < options given on the command line."""
    import dataclasses

    names = {f.name: f for f in dataclasses.fields(DistillConfig)}
    merged = _load_toml(config_file) if config_file else {}
    unknown = sorted(set(merged) - set(names))
    if unknown:
        raise StdtrtError(f"unknown setting(s) in {config_file}: {', '.join(unknown)}")
    merged.update({k: v for k, v in given.items() if v is not None})
    for key, value in merged.items():
        merged[key] = _coerce(key, value, names[key].default)
    return DistillConfig(**merged)


def _coerce(key: str, value, default):
    """A setting converted to its field's type, or one clear line (a TOML string where a number belongs)."""
    kind = type(default)
    try:
        if isinstance(default, tuple):
            parts = value.split(",") if isinstance(value, str) else value
            return tuple(int(p) for p in parts)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(default, int):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)  # a str that is not an integer, a list, a table: ValueError or TypeError
        if isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError
            return float(value)
        if isinstance(default, str) and not isinstance(value, str):
            raise TypeError
        return value
    except (TypeError, ValueError):
        name = {tuple: "list of integers"}.get(kind, kind.__name__)
        raise StdtrtError(f"setting {key.replace('_', '-')}: {value!r} is not a {name}") from None


@cli.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML file of settings (command-line options win).",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace the run in --out.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@_dataclass_options(DistillConfig, {"compile_loss": "--compile", "compile_loss:no": "--no-compile"})
def distill(config_file: str | None, resume: bool, overwrite: bool, no_progress: bool, **given) -> None:
    """Train a few-step LoRA student by Single Trajectory Distillation.

    \b
    Several GPUs: accelerate launch --multi_gpu --num_processes N -m stdtrt distill ...
    (the same command runs N CPU processes over gloo on a machine without CUDA).
    The run folder gets lora.safetensors (kohya: diffusers, ComfyUI, A1111),
    pytorch_lora_weights.safetensors (diffusers), checkpoints/, metrics.jsonl and config.json.
    """
    from stdtrt.distill.trainer import distill as run

    result = run(
        build_distill_config(config_file, given), resume=resume, overwrite=overwrite, progress=not no_progress
    )
    if result.main_process:
        click.echo(
            f"wrote {result.lora} after {result.steps} steps in {result.seconds:.0f} s (last loss {result.last_loss:.4g})"
        )


@cli.command()
@click.option(
    "--model",
    "-m",
    required=True,
    help="Diffusers folder, hub id in the local HF cache, single-file checkpoint, or a preset.",
)
@click.option(
    "--lora",
    default=E["lora"],
    type=click.Path(dir_okay=False),
    help="Student LoRA to fuse (none: the teacher).",
)
@click.option(
    "--prompt", "-p", default=E["prompt"], show_default=True, help="Style prompt (baked into the graph)."
)
@click.option(
    "--negative-prompt", default=E["negative_prompt"], help="Unconditional prompt (only with --guidance > 1)."
)
@click.option(
    "--strength", type=float, default=E["strength"], show_default=True, help="Partial-noise level eta."
)
@click.option("--nfe", type=int, default=E["nfe"], show_default=True, help="Student steps = stream slots.")
@click.option(
    "--guidance", type=float, default=E["guidance"], show_default=True, help="CFG (> 1 bakes both branches)."
)
@click.option("--width", type=int, default=E["width"], help="Width [default: the model's native size].")
@click.option("--height", type=int, default=E["height"], help="Height [default: the model's native size].")
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp16", "fp32"]),
    default=E["precision"],
    show_default=True,
    help="auto: fp16 where TensorRT builds engines here, else fp32.",
)
@click.option(
    "--out",
    "-o",
    default=E["out"],
    show_default=True,
    type=click.Path(file_okay=False),
    help="Bundle folder.",
)
@click.option(
    "--tensorrt/--no-tensorrt",
    default=E["tensorrt"],
    help="Build TensorRT engines [default: when CUDA and TensorRT are here]; --tensorrt fails without them.",
)
@click.option("--overwrite", is_flag=True, help="Replace a folder that holds a different bundle.")
@click.option("--opset", type=int, default=E["opset"], show_default=True, help="ONNX opset (17 or newer).")
@click.option(
    "--workspace-gb", type=float, default=E["workspace_gb"], show_default=True, help="TensorRT workspace."
)
@click.option("--no-validate", is_flag=True, help="Skip the onnxruntime vs torch check (not recommended).")
@click.option("--no-progress", is_flag=True, help="Hide the TensorRT build progress.")
def export(no_validate: bool, no_progress: bool, **kwargs) -> None:
    """Fuse the LoRA and export a fixed-timestep engine bundle (ONNX, TensorRT) with a manifest."""
    from stdtrt.export.export import export_bundle

    result = export_bundle(ExportConfig(validate=not no_validate, **kwargs), progress=not no_progress)
    if result.table:
        click.echo(result.table)
    total = sum(result.sizes.values()) / 1e6
    state = "reused" if result.reused else "written"
    click.echo(f"{result.tensorrt}")
    click.echo(
        f"bundle {result.path} {state} in {result.seconds:.0f} s ({total:.1f} MB, {len(result.sizes)} files)"
    )


@cli.command()
@click.option(
    "--bundle",
    default=B["bundle"],
    type=click.Path(file_okay=False),
    help=f"Bundle [default: ./{DEFAULT_BUNDLE}].",
)
@click.option("--frames", type=int, default=B["frames"], show_default=True, help="Frames of the test clip.")
@click.option(
    "--backend",
    "backends",
    multiple=True,
    type=click.Choice([b for b in BACKENDS if b != "auto"]),
    help="Backend to time (repeatable) [default: every one that loads].",
)
@click.option("--no-baseline", is_flag=True, help="Skip diffusers' img2img pipeline.")
@click.option("--device", default=B["device"], show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--plot", default=B["plot"], type=click.Path(dir_okay=False), help="Write a PNG chart here.")
@click.option(
    "--json", "json_path", default=B["json"], type=click.Path(dir_okay=False), help="Write results as JSON."
)
def bench(no_baseline: bool, json_path: str | None, backends: tuple, **kwargs) -> None:
    """Time each backend per stage and end to end, against diffusers' own img2img pipeline."""
    from stdtrt.eval.bench import run_bench

    cfg = BenchConfig(baseline=not no_baseline, json=json_path, backends=tuple(backends), **kwargs)
    click.echo(run_bench(cfg).table())


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes become one line on stderr and exit code 2, never a traceback."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no import-time chatter about torchvision
    try:
        cli.main(args=argv, prog_name="stdtrt", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except StdtrtError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
