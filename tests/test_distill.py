"""Single Trajectory Distillation: the bank, the target window, the fused loss, one training step's UNet
calls, exact resume, the NaN guard, bad input, and the LoRA files it writes."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import losses, small
from conftest import start_run as _run

from stdtrt import schedule
from stdtrt.config import DistillConfig
from stdtrt.distill.bank import TrajectoryBank
from stdtrt.distill.losses import FusedSTDLoss, std_loss
from stdtrt.distill.trainer import distill
from stdtrt.errors import StdtrtError


# -- the bank ----------------------------------------------------------------------------------------------
def _bank(p=0.8, size=4, seed=0):
    return TrajectoryBank(size, (4, 2, 2), p, (5.0, 15.0), seed)


def _fill(bank, n_values):
    slots = torch.full((len(n_values),), -1)
    k = len(n_values)
    bank.update(
        slots,
        torch.randn(k, 4, 2, 2),
        torch.tensor(n_values),
        torch.randn(k, 4, 2, 2),
        torch.full((k,), 7.0),
        torch.arange(k),
    )


def test_bank_never_returns_an_empty_slot_and_serves_any_batch():
    bank = _bank(p=1.0)
    assert (bank.draw(3) == -1).all()  # empty bank: everything starts fresh
    _fill(bank, [10, 20])
    for _ in range(50):
        slots = bank.draw(4)
        chosen = slots[slots >= 0]
        assert len(chosen) <= 2 and len(set(chosen.tolist())) == len(chosen)
        assert bank.live[chosen].all()
    with pytest.raises(ValueError):
        bank.draw(5)


def test_bank_keeps_each_trajectory_with_its_own_conditioning():
    bank = _bank(p=1.0)
    _fill(bank, [10, 20])
    got = bank.get(torch.tensor([0, 1]))
    assert got["prompt"].tolist() == [0, 1] and got["n"].tolist() == [10, 20]
    bank.update(
        torch.tensor([1]),
        torch.zeros(1, 4, 2, 2),
        torch.tensor([19]),
        torch.ones(1, 4, 2, 2),
        torch.tensor([9.0]),
        torch.tensor([5]),
    )
    got = bank.get(torch.tensor([1]))
    assert got["n"].item() == 19 and got["prompt"].item() == 1 and got["w"].item() == 7.0  # own prompt, own w


def test_bank_retires_at_index_one_and_drops_when_full():
    bank = _bank(size=2)
    _fill(bank, [5, 6])
    _fill(bank, [7])  # full: dropped
    assert bank.stats.dropped == 1 and len(bank) == 2
    bank.update(
        torch.tensor([0]),
        torch.zeros(1, 4, 2, 2),
        torch.tensor([1]),
        torch.zeros(1, 4, 2, 2),
        torch.zeros(1),
        torch.zeros(1, dtype=torch.long),
    )
    assert len(bank) == 1 and not bank.live[0] and bank.stats.retired == 1


def test_bank_reuse_fraction_follows_p_bank_and_is_seeded():
    for p in (0.0, 0.5, 0.8):
        bank = _bank(p=p, size=64)
        _fill(bank, list(range(10, 42)))
        drawn = torch.cat([bank.draw(8) for _ in range(400)])
        assert abs(float((drawn >= 0).float().mean()) - p) < 0.03
    a, b = _bank(seed=3), _bank(seed=3)
    _fill(a, [10, 11, 12])
    _fill(b, [10, 11, 12])
    assert all(torch.equal(a.draw(2), b.draw(2)) for _ in range(20))


def test_bank_state_round_trip():
    a = _bank(seed=1)
    _fill(a, [10, 12])
    a.draw(2)
    b = _bank(seed=99)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.x, b.x) and torch.equal(a.live, b.live)
    assert all(torch.equal(a.draw(2), b.draw(2)) for _ in range(10))


# -- the target window and the loss ------------------------------------------------------------------------
def test_target_index_stays_in_the_window_and_covers_it():
    g = torch.Generator().manual_seed(0)
    n = torch.tensor([38] * 4000 + [2] * 4000)
    s_idx = schedule.sample_target_index(n, 19, g)
    top, bottom = s_idx[:4000], s_idx[4000:]
    assert set(top.tolist()) == set(range(19, 38))  # {n - R, ..., n - 1}
    assert set(bottom.tolist()) == {0, 1}  # clipped at 0, which means s = 0
    assert schedule.grid_time_tensor(torch.tensor([-1, 0, 37])).tolist() == [0, 19, 759]


def test_pseudo_huber_and_jump_match_a_hand_computation():
    x, eps, target = torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), 0.5), torch.zeros(1, 1, 1, 1)
    a_t, b_t, a_s, b_s = 0.6, 0.8, 0.9, 0.43588989
    pred = a_s * (2.0 - b_t * 0.5) / a_t + b_s * 0.5  # = 2.7179
    expected = ((pred**2 + 1e-6) ** 0.5) - 1e-3
    loss, got_pred = std_loss(x, eps, target, a_t, b_t, a_s, b_s, 1e-3)
    assert abs(float(loss) - expected) < 1e-5 and abs(float(got_pred) - pred) < 1e-5


def test_compiled_loss_equals_eager_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    shape = (3, 4, 8, 8)
    x, target = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    coef = [torch.rand(3, 1, 1, 1, generator=g) + 0.1 for _ in range(4)]
    fused = FusedSTDLoss(compile=True)
    results = []
    for fn in (fused, std_loss):
        eps = torch.randn(shape, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        loss, pred = fn(x, eps, target, *coef, 1e-3)
        (loss + pred.mean()).backward()  # gradients through both outputs (the adversarial branch uses pred)
        results.append((loss.detach(), eps.grad))
    assert fused.fused, "torch.compile did not produce a fused kernel here"
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-7)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-9)


# -- one training step -------------------------------------------------------------------------------------
def test_one_step_makes_one_guided_teacher_call_and_trains_only_the_lora(data_dir, tmp_path):
    run = _run(small(data_dir, tmp_path / "r"))
    calls = []
    hook = run.raw_unet.register_forward_hook(
        lambda m, args, kwargs, out: calls.append(args[0].shape[0]), with_kwargs=True
    )
    before = {n: p.detach().clone() for n, p in run.raw_unet.named_parameters()}
    try:
        run.optimise()
    finally:
        hook.remove()
    # student (B), teacher with both guidance branches in one call (2B), target (B): no trajectory walk
    assert calls == [2, 4, 2] and run.teacher.calls == 1
    changed = {n for n, p in run.raw_unet.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and all("lora" in n for n in changed)
    assert len(run.bank) == 2  # both new trajectories were stored at n_eta - 1
    assert run.bank.n[run.bank.live].tolist() == [schedule.start_index(0.75) - 1] * 2


def test_the_std_step_matches_a_hand_computation(data_dir, tmp_path):
    """distill/step.py's pure step on the tiny UNet, against the formulas of std.md written out with plain
    UNet calls (conftest.hand_step). R = 1 makes s = t_{n-2} deterministic."""
    from conftest import hand_step, perturbed_run, step_case

    run = perturbed_run(data_dir, tmp_path / "r")
    x, n, w, out = step_case(run, 0)
    s = torch.tensor([739, 379])  # t_{n-2}
    ref = hand_step(run, x, n, w, s)
    assert out.s.tolist() == s.tolist() and out.n_next.tolist() == [37, 19]
    for name in ("x_next", "target", "pred"):
        assert torch.allclose(getattr(out, name), getattr(ref, name), atol=1e-5), name
    assert abs(float(out.loss.detach()) - float(ref.loss)) < 1e-6
    assert out.loss.requires_grad and out.pred.requires_grad
    assert not torch.allclose(ref.e_c, ref.eps, atol=1e-3)  # the teacher really ran without the adapter


# -- whole runs --------------------------------------------------------------------------------------------
def test_resume_continues_exactly(data_dir, tmp_path):
    import shutil

    cfg = small(data_dir, tmp_path / "straight", max_steps=6, checkpoint_every=3)
    distill(cfg, progress=False)
    # an interruption after the step-3 checkpoint: what a killed run leaves behind
    split = tmp_path / "split"
    shutil.copytree(tmp_path / "straight", split)
    shutil.rmtree(split / "checkpoints" / "step-000006")
    (split / "lora.safetensors").unlink()
    lines = (split / "metrics.jsonl").read_text().splitlines()
    (split / "metrics.jsonl").write_text("\n".join(lines[:5]) + "\n")  # step 4 and 5 were logged, then killed
    distill(small(data_dir, split, max_steps=6, checkpoint_every=3), resume=True, progress=False)
    a, b = losses(tmp_path / "straight"), losses(split)
    assert len(a) == len(b) == 6
    assert a == b
    from safetensors.torch import load_file

    la, lb = (
        load_file(str(tmp_path / "straight/lora.safetensors")),
        load_file(str(split / "lora.safetensors")),
    )
    assert all(torch.equal(la[k], lb[k]) for k in la)


def test_shared_and_copied_teacher_train_identically(data_dir, tmp_path):
    distill(small(data_dir, tmp_path / "shared", max_steps=3), progress=False)
    distill(small(data_dir, tmp_path / "copy", max_steps=3, teacher="copy"), progress=False)
    assert losses(tmp_path / "shared") == losses(tmp_path / "copy")


def test_ema_target_runs_and_differs(data_dir, tmp_path):
    distill(small(data_dir, tmp_path / "ema", max_steps=3, target="ema", ema_decay=0.5), progress=False)
    distill(small(data_dir, tmp_path / "stu", max_steps=3), progress=False)
    a, b = losses(tmp_path / "ema"), losses(tmp_path / "stu")
    assert a[0] == b[0] and a[1:] != b[1:]  # same start (LoRA B = 0), different targets after one update


def test_nan_guard_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    cfg = small(data_dir, tmp_path / "nan", max_steps=5, lr=1e30, warmup_steps=0, checkpoint_every=1)
    with pytest.raises(StdtrtError, match="became .*step .*last good checkpoint is .*step-00000"):
        distill(cfg, progress=False)
    assert not (tmp_path / "nan" / "lora.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "nan" / "checkpoints").iterdir())


def test_resume_refuses_other_dtypes_than_the_checkpoints(data_dir, tmp_path):
    """--mixed-precision auto resolves by the GPU: a run made in bf16 is not resumed in another dtype."""
    import json

    cfg = small(data_dir, tmp_path / "r", max_steps=2, checkpoint_every=1, mixed_precision="auto")
    distill(cfg, progress=False)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["placement"] == {"device": "cpu", "unet": "fp32", "vae": "fp32"}
    saved["placement"].update(unet="bf16", vae="bf16")  # as if trained on a GPU with bf16
    (tmp_path / "r" / "config.json").write_text(json.dumps(saved))
    with pytest.raises(StdtrtError, match="trained with UNet bf16.*would use fp32.*--mixed-precision bf16"):
        distill(
            small(data_dir, tmp_path / "r", max_steps=4, checkpoint_every=1, mixed_precision="auto"),
            resume=True,
            progress=False,
        )


def test_saved_lora_reproduces_the_in_memory_student(data_dir, tmp_path):
    from stdtrt.distill.checkpoint import save_lora
    from stdtrt.models.card import StudentCard
    from stdtrt.models.conditioning import predict_eps
    from stdtrt.models.load import load_model

    run = _run(small(data_dir, tmp_path / "r", lr=1e-2, teacher_steps=25))
    for _ in range(2):
        run.optimise()
    save_lora(run)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    cond = run.prompts.map(lambda t: t[:1])
    with torch.no_grad():
        ours = predict_eps(run.raw_unet, x, 600, cond)
        teacher = load_model("tiny-sd")
        base = predict_eps(teacher.unet, x, 600, cond)
        for name in ("lora.safetensors", "pytorch_lora_weights.safetensors"):
            fresh = load_model("tiny-sd", lora=str(tmp_path / "r" / name))
            assert (predict_eps(fresh.unet, x, 600, cond) - ours).abs().max() < 1e-5, name
            assert StudentCard.read(tmp_path / "r" / name).grid(0.75) == 25, name  # both files carry the grid
    assert (ours - base).abs().max() > 1e-4  # the trained adapter is not zero


def test_video_data_is_sampled_into_frames(tmp_path):
    from conftest import make_video

    data = tmp_path / "clips"
    data.mkdir()
    make_video(data / "clip.mp4", frames=6, size=(48, 40), audio=False)
    (data / "clip.txt").write_text("a cat")
    cfg = small(data, tmp_path / "v", max_steps=1, frames_per_video=3, rho=0.3)
    distill(cfg, progress=False)
    frames = list((tmp_path / "v" / "cache" / "frames").rglob("*.png"))
    assert len(frames) == 3


# -- bad input ---------------------------------------------------------------------------------------------
def test_bad_input_is_refused_before_anything_is_written(data_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StdtrtError, match="no images or videos"):
        distill(small(empty, tmp_path / "a"), progress=False)
    with pytest.raises(StdtrtError, match="does not exist"):
        distill(small(tmp_path / "nope", tmp_path / "a"), progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.png").write_bytes(b"not a png")
    with pytest.raises(StdtrtError, match="unreadable files"):
        distill(small(broken, tmp_path / "b"), progress=False)
    with pytest.raises(StdtrtError, match="strength"):
        small(data_dir, tmp_path / "c", strength=1.5)
    with pytest.raises(StdtrtError, match="cannot serve a batch"):
        small(data_dir, tmp_path / "c", batch_size=8, bank_size=4)
    with pytest.raises(StdtrtError, match="hf download"):
        distill(small(data_dir, tmp_path / "d", model="nobody/nothing"), progress=False)
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_run_folder_is_protected(data_dir, tmp_path):
    out = tmp_path / "run"
    distill(small(data_dir, out, max_steps=1), progress=False)
    before = (out / "lora.safetensors").read_bytes()
    with pytest.raises(StdtrtError, match="already holds a run"):
        distill(small(data_dir, out, max_steps=2), progress=False)
    with pytest.raises(StdtrtError, match="another config.*lr"):
        distill(small(data_dir, out, max_steps=2, lr=0.5), resume=True, progress=False)
    assert (out / "lora.safetensors").read_bytes() == before
    distill(small(data_dir, out, max_steps=1, seed=3), overwrite=True, progress=False)
    assert json.loads((out / "config.json").read_text())["seed"] == 3
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(StdtrtError, match="not part of a stdtrt run"):
        distill(small(data_dir, stranger), overwrite=True, progress=False)
    assert (stranger / "notes.txt").exists()


def test_two_cpu_processes_with_accelerate(data_dir, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [
        str(accelerate),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "stdtrt",
        "distill",
        "--model",
        "tiny-sd",
        "--data",
        str(data_dir),
        "--prompt",
        "a photo",
        "--out",
        str(out),
        "--max-steps",
        "3",
        "--batch-size",
        "2",
        "--bank-size",
        "4",
        "--resolution",
        "32",
        "--lora-rank",
        "4",
        "--no-compile-loss",
        "--log-every",
        "1",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": "29517"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("wrote ") == 1  # only the main process reports
    ckpt = out / "checkpoints" / "step-000003"
    r0 = torch.load(ckpt / "rank0.pt", weights_only=True)
    r1 = torch.load(ckpt / "rank1.pt", weights_only=True)
    # each process has its own bank, fed from its own shard of the data
    assert not torch.equal(r0["bank"]["z0"], r1["bank"]["z0"])
    assert len(losses(out)) == 3 and (out / "lora.safetensors").exists()


def test_cli_reads_a_toml_file_and_options_win(data_dir, tmp_path):
    from stdtrt.cli import main

    toml = tmp_path / "distill.toml"
    toml.write_text(
        f'model = "tiny-sd"\ndata = "{data_dir}"\nprompt = "a photo"\nmax-steps = 5\nbatch_size = 2\nbank_size = 4\n'
        f"resolution = 32\nlora_rank = 4\nadv_blocks = [1, 2]\n"
    )
    out = tmp_path / "cli"
    main(
        [
            "distill",
            "--config",
            str(toml),
            "--out",
            str(out),
            "--max-steps",
            "1",
            "--no-compile-loss",
            "--no-progress",
        ]
    )
    saved = json.loads((out / "config.json").read_text())
    assert saved["max_steps"] == 1 and saved["resolution"] == 32 and saved["compile_loss"] is False
    assert saved["adv_blocks"] == [1, 2]


def test_lcm_mode_trains_forward_noised_states_towards_x0(data_dir, tmp_path):
    with pytest.raises(StdtrtError, match="p-bank 0"):
        small(data_dir, tmp_path / "x", mode="lcm")
    run = _run(small(data_dir, tmp_path / "lcm", mode="lcm", p_bank=0.0, batch_size=4))
    fresh = run._fresh(64)
    assert fresh["n"].min() >= 1 and fresh["n"].max() <= 49 and len(set(fresh["n"].tolist())) > 20
    run.optimise()
    assert len(run.bank) == 0  # no bank in LCM mode


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--adv-blocks", "2,x"], "adv-blocks"),
        (["--checkpoint-every", "0"], "checkpoint-every"),
        (["--log-every", "0"], "log-every"),
    ],
)
def test_distill_option_mistakes_are_one_line(argv, needle, capsys, tmp_path):
    from stdtrt.cli import main

    with pytest.raises(SystemExit) as done:
        main(["distill", "--model", "tiny-sd", "--data", str(tmp_path), "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(err) == 1 and needle in err[0]


@pytest.mark.parametrize(
    "text,needle",
    [("colour = 3\n", "unknown setting(s)"), ('lr = "1e-4"\n', "lr: '1e-4' is not a float")],
)
def test_a_toml_mistake_exits_2_and_says_which(text, needle, tmp_path, capsys):
    from stdtrt.cli import main

    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    with pytest.raises(SystemExit) as done:
        main(["distill", "--config", str(toml)])
    assert done.value.code == 2 and needle in capsys.readouterr().err


def test_an_image_over_the_decompression_bomb_limit_is_one_line(tmp_path, monkeypatch):
    """Pillow raises past twice MAX_IMAGE_PIXELS; the limit is lowered here instead of writing a huge file."""
    from PIL import Image

    from stdtrt.io.images import read_image

    folder = tmp_path / "data"
    folder.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(folder / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels > 2 x 1000
    with pytest.raises(
        StdtrtError, match=r"huge.png has more pixels than Pillow's decompression-bomb limit \(1000\)"
    ):
        distill(small(folder, tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(StdtrtError, match="more pixels than Pillow's decompression-bomb limit"):
        read_image(folder / "huge.png")


def test_distill_needs_a_model_and_names_the_offline_one(data_dir, tmp_path, capsys):
    from stdtrt.cli import main

    with pytest.raises(SystemExit) as done:
        main(["distill", "--data", str(data_dir), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(err) == 1 and "--model" in err[0] and "tiny-sd" in err[0]
    assert not (tmp_path / "o").exists()


def test_the_default_window_is_the_one_the_fidelity_benchmark_found_best():
    """rho 0.25 for images (benchmarks/results/fidelity.json: best at NFE 2, 4 and 8), the authors' 0.3 for
    clips; at eta 0.75 on the 50-step grid the image window is R = 10 (jumps of 2 to 11 grid steps), which
    holds NFE 4's jumps."""
    fidelity = json.loads((Path(__file__).parents[1] / "benchmarks/results/fidelity.json").read_text())
    mse = {(r["contender"], r["nfe"]): r["mse_mean"] for r in fidelity["summary"]}
    assert all(mse[("STD R10", nfe)] < mse[("STD", nfe)] for nfe in (2, 4, 8))
    image = DistillConfig(model="tiny-sd")
    r = schedule.window(0.75, image.rho, 50)
    assert image.rho == 0.25 and r == 10
    # a target lands 2 .. R + 1 grid steps below its state; NFE 4 jumps 38 -> 29 -> 19 -> 10 -> clean (-1)
    jumps = -np.diff([*schedule.student_indices(0.75, 4), -1])
    assert jumps.min() >= 2 and jumps.max() <= r + 1
    assert DistillConfig(model="tiny-sd", motion_adapter="tiny-motion").rho == 0.3


def test_compile_means_one_thing_distill_s_loss_has_its_own_flag(data_dir, tmp_path, capsys):
    from stdtrt.cli import main

    with pytest.raises(SystemExit) as done:
        main(["distill", "--model", "tiny-sd", "--data", str(data_dir), "--compile"])
    assert done.value.code == 2 and "--compile" in capsys.readouterr().err
    help_text = DistillConfig.__dataclass_fields__["compile_loss"].metadata
    assert help_text.get("flag") is None  # generated as --compile-loss / --no-compile-loss


def test_resume_keeps_the_run_s_own_settings(data_dir, tmp_path, capsys):
    """`--resume` alone continues a run started with other settings than the defaults (its model, its
    rho): the saved config is the base, options given now still win (and are checked)."""
    from stdtrt.cli import main

    out = tmp_path / "run"
    common = ["--no-compile-loss", "--no-progress"]
    main(["distill", "--model", "tiny-sd", "--data", str(data_dir), "--prompt", "a photo", "--out", str(out),
          "--rho", "0.5", "--max-steps", "1", "--batch-size", "2", "--bank-size", "4", "--resolution", "32",
          "--lora-rank", "4", *common])  # fmt: skip
    main(["distill", "--out", str(out), "--resume", "--max-steps", "2", *common])
    saved = json.loads((out / "config.json").read_text())
    assert saved["rho"] == 0.5 and saved["max_steps"] == 2 and len(losses(out)) == 2
    with pytest.raises(SystemExit) as done:
        main(["distill", "--out", str(out), "--resume", "--rho", "0.25", *common])
    assert done.value.code == 2 and "rho: 0.5 -> 0.25" in capsys.readouterr().err
