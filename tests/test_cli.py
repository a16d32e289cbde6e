"""The command line: --help imports no torch, user mistakes are one line and a non-zero exit."""

import subprocess
import sys

import pytest
from conftest import run_cli


def test_help_does_not_import_torch():
    code = "import sys; from stdtrt.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "Usage: stdtrt" in out and out.strip().endswith("False")


@pytest.mark.parametrize(
    "command",
    [
        "stylize-image",
        "stylize-video",
        "stylize-batch",
        "demo",
        "info",
        "export",
        "validate",
        "bench",
        "live",
    ],
)
def test_every_command_has_help(command, capsys):
    code, out, _ = run_cli([command, "--help"], capsys)
    assert code == 0 and "Usage" in out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["stylize-video", "missing.mp4", "-o", "o.mp4", "--model", "tiny-sd"], "does not exist"),
        (["stylize-video", "{video}", "-o", "o.mp4", "--model", "tiny-sd", "--strength", "1.2"], "strength"),
        (["stylize-video", "{video}", "-o", "o.mp4", "--model", "tiny-sd", "--nfe", "0"], "nfe"),
        (
            ["stylize-video", "{video}", "-o", "o.mp4", "--model", "tiny-sd", "--width", "100"],
            "multiple of 8",
        ),
        (["stylize-video", "{video}", "-o", "o.mp4", "--model", "who/what"], "tiny-sd"),
        (["stylize-video", "{video}", "-o", "{video}", "--model", "tiny-sd"], "is the input"),
        (["stylize-image", "missing.png", "-o", "o.png", "--model", "tiny-sd"], "does not exist"),
        (["stylize-video", "{video}", "-o", ".", "--model", "tiny-sd"], "is a directory"),
        # click's own mistakes read the same way
        (["stylize-video", "{video}", "--model", "tiny-sd", "--nope"], "No such option '--nope'"),
        (["stylize-video", "{video}", "--nfe", "four"], "'four' is not a valid integer"),
        (["stylize-video", "{video}", "--style-blocks", "middle"], "'middle' is not one of"),
        (["stylize-video"], "Missing argument"),
        (["stylize-video", "{video}", "-o", "o.mp4", "--style-scale", "3"], "[0, 2]"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(argv, needle, capsys, video, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{video}", str(video)) for a in argv]
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]


def test_info_lists_backends(capsys):
    code, out, _ = run_cli(["info"], capsys)
    assert code == 0 and "onnxruntime" in out and "tensorrt" in out and "torch" in out


def test_stylize_video_cli_end_to_end(video, tmp_path, capsys):
    out = tmp_path / "styled.mp4"
    code, stdout, _ = run_cli(
        [
            "stylize-video",
            str(video),
            "-o",
            str(out),
            "--model",
            "tiny-sd",
            "--prompt",
            "ink",
            "--width",
            "64",
            "--height",
            "48",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0 and out.exists() and "8 frames" in stdout


def test_demo_runs_offline(tmp_path, capsys):
    code, stdout, _ = run_cli(
        [
            "demo",
            "--out",
            str(tmp_path / "d"),
            "--frames",
            "6",
            "--no-progress",
            "--report",
            "--width",
            "64",
            "--height",
            "48",
        ],
        capsys,
    )
    assert (
        code == 0
        and (tmp_path / "d" / "stylized.mp4").exists()
        and "fps" in stdout
        and "warp error" in stdout
    )


def test_export_cli_reuses_a_matching_bundle(sd_bundle, tmp_path, capsys):
    import shutil

    cfg, result = sd_bundle
    shutil.copytree(result.path, tmp_path / "b")
    argv = ["export", "--model", "tiny-sd", "--lora", cfg.lora, "--prompt", cfg.prompt, "--width", "64"]
    code, out, _ = run_cli([*argv, "--height", "64", "--out", str(tmp_path / "b")], capsys)
    assert code == 0 and "reused" in out and "TensorRT engines skipped" in out
    code, _, err = run_cli([*argv, "--height", "64", "--nfe", "3", "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and err.startswith("error: ") and "--overwrite" in err and len(err.splitlines()) == 1


def test_stylize_video_cli_with_a_bundle(sd_bundle, video, tmp_path, capsys):
    out = tmp_path / "styled.mp4"
    argv = ["stylize-video", str(video), "-o", str(out), "--bundle", str(sd_bundle[1].path), "--no-progress"]
    code, stdout, _ = run_cli(argv, capsys)
    assert code == 0 and out.exists() and "8 frames at 64x64" in stdout


def test_missing_default_bundle_is_one_line(video, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["stylize-video", str(video), "-o", "o.mp4"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "stdtrt export" in err and "--model" in err


def test_export_needs_no_demo_extra(tmp_path):
    """`pip install -e ".[onnx]"` without the demo extra: export validates on synthetic sample photographs
    (io/samples.py), nothing imports scikit-image or the demo."""
    code = (
        "import sys; sys.modules['skimage'] = None\n"  # as if scikit-image were not installed
        "from stdtrt.cli import main\n"
        f"main(['export', '--model', 'tiny-sd', '--width', '64', '--height', '64', '--nfe', '1', "
        f"'--no-tensorrt', '--out', {str(tmp_path / 'b')!r}])\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "frames (stream vs sequential torch)" in run.stdout and (tmp_path / "b" / "manifest.json").exists()
    assert "stdtrt.demo" not in run.stdout + run.stderr


def test_gpu_check_imports_nothing_the_gpu_machines_lack():
    """The lent GPU machines have no PyAV (and no diffusers until it is carried): benchmarks/gpu_check.py
    must start without PyAV. It is not run here (no test depends on it); its imports are checked."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    code = f"import runpy, sys; sys.modules['av'] = None; sys.argv = ['gpu_check', '--help']; runpy.run_path({str(script)!r}, run_name='__main__')"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0 and "GPU check" in run.stdout, run.stderr[-2000:]
