"""The `stdtrt` command line. Each command parses its options into a config and calls ONE library function.

Every option of a config is generated from its field (cli_options.py), so the command line and the configs
cannot disagree. Nothing heavy is imported at
module level: `stdtrt --help` does not import torch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

import click

from stdtrt import __version__
from stdtrt.cli_exit import Terminated, on_sigterm, os_error_line
from stdtrt.cli_options import ablations, build_config, build_distill_config, config_options
from stdtrt.config import BatchConfig, BenchConfig, DistillConfig, ExportConfig, LiveConfig, StylizeConfig
from stdtrt.errors import StdtrtError


# -- the commands ---------------------------------------------------------------------------------------------
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
      stdtrt stylize-batch ...   many videos (or segments of one) over Ray workers, every GPU
      stdtrt live ...            stylize a camera, URL, pipe or the page's webcam, live
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
@config_options(StylizeConfig, group=None)
def stylize_image_cmd(input: str, output: str, **given) -> None:
    """Stylize one image in NFE student steps from the fixed partial-noise state."""
    from stdtrt.runtime.stylize import stylize_image

    path = stylize_image(build_config(StylizeConfig, given), input, output)
    click.echo(f"wrote {path}")


def _video_flags(fn):
    fn = click.option("--no-progress", is_flag=True, help="Hide the progress bar.")(fn)
    return click.option(
        "--report", is_flag=True, help="Also measure the output's temporal consistency (warp error)."
    )(fn)


@cli.command("stylize-video", epilog=ablations(StylizeConfig, "video"))
@click.argument("input", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Output video (.mp4, .mov, .m4v, .mkv, .webm).",
)
@config_options(StylizeConfig, group="video")
@_video_flags
def stylize_video_cmd(input: str, output: str, no_progress: bool, report: bool, **given) -> None:
    """Stylize a video frame by frame, keeping its frame rate, size and audio."""
    from stdtrt.runtime.stylize import stylize_video

    result = stylize_video(build_config(StylizeConfig, given), input, output, progress=not no_progress)
    skipped = f", {result.skipped} reused an output (--skip-threshold)" if result.skipped else ""
    click.echo(
        f"wrote {result.output}: {result.frames} frames at {result.width}x{result.height}, "
        f"{result.fps:.2f} fps, audio {result.audio}{skipped}"
    )
    if report:
        _echo_report(input, output)


@cli.command("stylize-batch", epilog=ablations(StylizeConfig, "video"))
@click.argument("inputs", nargs=-1, type=click.Path())
@config_options(BatchConfig)
@config_options(StylizeConfig, group="video")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def stylize_batch_cmd(inputs: tuple[str, ...], no_progress: bool, **given) -> None:
    """Stylize many videos (a folder, a text file of paths, or paths), or segments of long ones, on Ray
    workers: one per GPU here, or on a running cluster (--ray-address). Every stylize-video option applies
    to every video. The job record in the output folder lets --resume skip what is done. Exits 1 when a
    unit failed (each listed with its reason), 2 on a user mistake, 130 on Ctrl-C (--resume continues)."""
    from stdtrt.batch.job import run_job

    stylize = build_config(StylizeConfig, given)
    job = dataclasses.replace(build_config(BatchConfig, given), stylize=stylize)
    result = run_job(job, list(inputs), progress=not no_progress)
    click.echo(result.table())
    if result.failed:
        sys.exit(1)


@cli.command(epilog=ablations(StylizeConfig, "video"))
@config_options(LiveConfig)
@config_options(StylizeConfig, group="video")
def live(**given) -> None:
    """Stylize a live stream: a camera, a URL, a pipe, a file or the page's webcam, to the page, a URL, a
    pipe, a file or a virtual camera. The newest frame wins (stale ones dropped and counted); the final
    line gives fps, drops and capture-to-sink latency p50/p95.

    \b
    stdtrt live --bundle B --source /dev/video0 --sink web      open the printed URL
    stdtrt live --bundle B --source - --sink - < in.y4m > out.y4m
    stdtrt live --bundle B --source web --sink web              the page's own webcam, over WebRTC
    stdtrt live --bundle B --source clip.mp4 --realtime --sink out.mp4
    """
    import dataclasses as dc

    from stdtrt.live.run import run_live

    cfg = dc.replace(build_config(LiveConfig, given), stylize=build_config(StylizeConfig, given))
    LiveConfig.__post_init__(cfg)  # the checks that need the stylize settings (--frames-per-step)
    result = run_live(cfg)
    click.echo(f"live: {result.line}", err=True)


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


@cli.command(epilog=ablations(StylizeConfig, "video"))
@click.option(
    "--out", default="stdtrt-demo", show_default=True, type=click.Path(file_okay=False), help="Output folder."
)
@click.option(
    "--frames", type=int, default=36, show_default=True, help="Frames of the sample video (12 fps)."
)
@config_options(StylizeConfig, group="video")
@_video_flags
def demo(out: str, frames: int, no_progress: bool, report: bool, **given) -> None:
    """Make a sample video from bundled photographs and stylize it (default: tiny-sd, offline)."""
    from stdtrt.demo import run_demo

    given["model"] = given["model"] or "tiny-sd"
    given["prompt"] = given["prompt"] or "an oil painting, thick brush strokes"
    result = run_demo(build_config(StylizeConfig, given), out, frames=frames, progress=not no_progress)
    source = result.output.parent / "input.mp4"
    click.echo(f"input:  {source}")
    click.echo(f"output: {result.output}")
    click.echo(
        f"{result.frames} frames at {result.width}x{result.height} on {given['model']}: {result.fps:.2f} fps "
        f"end to end (decode, stylize, encode), audio {result.audio}"
    )
    if report:
        _echo_report(source, result.output)


@cli.command(epilog=ablations(DistillConfig))
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML file of settings (command-line options win).",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace the run in --out.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@config_options(DistillConfig)
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
        build_distill_config(config_file, given, resume),
        resume=resume,
        overwrite=overwrite,
        progress=not no_progress,
    )
    if result.main_process:
        click.echo(
            f"wrote {result.lora} after {result.steps} steps in {result.seconds:.0f} s (last loss {result.last_loss:.4g})"
        )


@cli.command()
@config_options(ExportConfig)
@click.option("--no-progress", is_flag=True, help="Hide the TensorRT build progress.")
def export(no_progress: bool, **given) -> None:
    """Fuse the LoRA and export a fixed-timestep engine bundle (ONNX, TensorRT) with a manifest."""
    from stdtrt.export.export import export_bundle

    result = export_bundle(build_config(ExportConfig, given), progress=not no_progress)
    if result.table:
        click.echo(result.table)
    total = sum(result.sizes.values()) / 1e6
    state = "reused" if result.reused else "written"
    click.echo(f"{result.tensorrt}")
    click.echo(
        f"bundle {result.path} {state} in {result.seconds:.0f} s ({total:.1f} MB, {len(result.sizes)} files)"
    )


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option(
    "--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N (as for export)."
)
def validate(bundle: str, device: str) -> None:
    """Validate a bundle exported with --no-validate, in place: its graphs (and engines that fit here)
    against the torch reference, with the options it was exported with; the table goes into its manifest."""
    from stdtrt.export.export import validate_bundle

    result = validate_bundle(bundle, device)
    if result.table:
        click.echo(result.table)
    click.echo(f"bundle {result.path}: {result.tensorrt} ({result.seconds:.0f} s)")


@cli.command()
@config_options(BenchConfig)
def bench(**given) -> None:
    """Time each backend per stage and end to end, against diffusers' own img2img pipeline."""
    from stdtrt.eval.bench import run_bench

    click.echo(run_bench(build_config(BenchConfig, given)).table())


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes become one line on stderr and exit code 2, never a traceback; SIGINT and
    SIGTERM clean up and exit 130 and 143."""
    import signal

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no import-time chatter about torchvision
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        cli.main(args=argv, prog_name="stdtrt", standalone_mode=False)
    except Terminated:
        click.echo("terminated (SIGTERM): stopped, nothing half-written left", err=True)
        sys.exit(143)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.UsageError as exc:  # click's own: the same one line as stdtrt's, with where to look
        command = exc.ctx.command_path if exc.ctx else "stdtrt"
        click.echo(f"error: {exc.format_message()} (see `{command} --help`)", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except StdtrtError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:  # a full disk, a read-only folder, a file that vanished: the path and the cause
        logging.getLogger("stdtrt").debug("the OS error in full", exc_info=True)
        click.echo(f"error: {os_error_line(exc)}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
