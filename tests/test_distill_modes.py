"""The baseline modes of the one training step (distill/step.py MODES: LCM, TCD, PCM) and STD's issue-25
options (the teacher's own step as a target, the loss in noise units), each checked against the formulas
written out here with plain UNet calls, and a short distill run per mode."""

import json

import pytest
import torch
from conftest import hand_step, perturbed_run, small, step_case

from stdtrt import schedule
from stdtrt.config import DISTILL_MODES
from stdtrt.distill.step import MODES, StepPlan, target_index
from stdtrt.distill.trainer import distill
from stdtrt.errors import StdtrtError


def test_every_mode_is_documented_and_offered():
    assert tuple(MODES) == DISTILL_MODES


def test_phase_edges_are_the_landing_points_of_the_nfe_plan():
    # eta 0.75, NFE 4 visits grid indices 38, 29, 19, 10 and lands on t_29, t_19, t_10, 0: the s_idx of a
    # landing at t_m is m + 1 (s = t_{s_idx - 1}), and 0 for the clean end
    assert schedule.phase_edges(0.75, 4) == (0, 11, 20, 30)
    n = torch.tensor([38, 31, 30, 29, 20, 19, 11, 10, 1, 49])
    assert schedule.phase_edge(n, (0, 11, 20, 30)).tolist() == [30, 30, 30, 20, 20, 11, 11, 0, 0, 30]


def test_tcd_and_std_windows_cover_what_their_papers_say():
    g = torch.Generator().manual_seed(0)
    plan = StepPlan(torch.ones(1000), 50, 3, "tcd", 1e-3)
    n = torch.full((3000,), 5)
    assert set(target_index(n, plan, g).tolist()) == set(range(6))  # TCD: U{0, ..., n}, boundary included
    with_teacher = StepPlan(torch.ones(1000), 50, 3, "std", 1e-3, teacher_target=True)
    n = torch.full((3000,), 38)
    assert set(target_index(n, with_teacher, g).tolist()) == {35, 36, 37, 38}  # {n - R, ..., n}
    plain = StepPlan(torch.ones(1000), 50, 3, "std", 1e-3)
    assert set(target_index(n, plain, g).tolist()) == {35, 36, 37}  # std.md: {n - R, ..., n - 1}
    lcm = StepPlan(torch.ones(1000), 50, 3, "lcm", 1e-3)
    assert target_index(n[:4], lcm, g).tolist() == [0] * 4


@pytest.mark.parametrize(
    "mode,extra,expected_s",
    [
        ("lcm", {}, [0, 0]),  # always the clean end
        # PCM, phases of the NFE-4 plan: 38 lands on t_29 = 599; 20 is a phase edge: one step, onto t_19 = 399
        ("pcm", {"phase_edges": (0, 11, 20, 30)}, [599, 399]),
        ("std", {"eps_units": True}, [739, 379]),  # R = 1: s = t_{n-2}, as the std step test
    ],
)
def test_each_mode_step_matches_a_hand_computation(data_dir, tmp_path, mode, extra, expected_s):
    run = perturbed_run(data_dir, tmp_path / "r")
    x, n, w, out = step_case(run, 0, mode, **extra)
    ref = hand_step(run, x, n, w, torch.tensor(expected_s), extra.get("eps_units", False))
    assert out.s.tolist() == expected_s and out.n_next.tolist() == [37, 19]
    for name in ("x_next", "target", "pred"):
        assert torch.allclose(getattr(out, name), getattr(ref, name), atol=1e-5), name
    assert abs(float(out.loss.detach()) - float(ref.loss)) < 1e-5 * max(1.0, float(ref.loss))
    assert out.loss.requires_grad
    if mode == "pcm":  # on a phase edge the target is the teacher's own step, exactly
        assert torch.allclose(out.target[1], out.x_next[1], atol=1e-6)


def test_tcd_and_teacher_target_steps_match_a_hand_computation_at_the_drawn_s(data_dir, tmp_path):
    """TCD and STD with the teacher's own step draw s at random: the hand computation uses the s they drew,
    and the draws must lie where each one's rule says."""
    run = perturbed_run(data_dir, tmp_path / "r")
    tcd = [{0} | {20 * k - 1 for k in range(1, 39)}, {0} | {20 * k - 1 for k in range(1, 21)}]  # <= t_{n-1}
    for mode, extra, allowed in (
        ("tcd", {}, tcd),
        ("std", {"teacher_target": True}, [{739, 759}, {379, 399}]),  # R = 1: t_{n-2} or t_{n-1}
    ):
        for seed in range(3):
            x, n, w, out = step_case(run, seed, mode, **extra)
            assert all(int(si) in ok for si, ok in zip(out.s, allowed, strict=True)), (mode, out.s)
            ref = hand_step(run, x, n, w, out.s)
            assert torch.allclose(out.target, ref.target, atol=1e-5)
            assert torch.allclose(out.pred, ref.pred, atol=1e-5)
            assert abs(float(out.loss.detach()) - float(ref.loss)) < 1e-5


@pytest.mark.parametrize("mode", ["tcd", "pcm"])
def test_a_short_distill_run_per_baseline_mode(data_dir, tmp_path, mode):
    out = tmp_path / mode
    result = distill(small(data_dir, out, mode=mode, p_bank=0.0, max_steps=2, nfe_hint=2), progress=False)
    assert result.lora.exists() and result.steps == 2
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in lines)
    assert json.loads((out / "config.json").read_text())["mode"] == mode


def test_a_short_std_run_with_the_issue25_options(data_dir, tmp_path):
    out = tmp_path / "fix"
    distill(small(data_dir, out, max_steps=2, teacher_target=True, eps_units=True), progress=False)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["teacher_target"] and cfg["eps_units"] and (out / "lora.safetensors").exists()


def test_baseline_modes_refuse_the_bank_and_unknown_modes_are_one_line(data_dir, tmp_path, capsys):
    from stdtrt.cli import main

    for mode in ("tcd", "pcm"):
        with pytest.raises(StdtrtError, match="p-bank 0"):
            small(data_dir, tmp_path / "x", mode=mode)
    with pytest.raises(SystemExit) as done:
        main(["distill", "--data", str(data_dir), "--out", str(tmp_path / "o"), "--mode", "ctm"])
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(err) == 1 and "--mode" in err[0]


def test_the_baseline_modes_are_named_with_the_ablations_not_in_the_option_list():
    from click.testing import CliRunner

    from stdtrt.cli import cli

    text = CliRunner().invoke(cli, ["distill", "--help"], terminal_width=110).output
    options, _, epilog = text.partition("For comparisons")
    assert "--mode std|lcm|tcd|pcm" in epilog and "\n  --mode " not in options
    assert "\n  --eps-units " in options and "\n  --teacher-target " in options  # the fix: a real option
