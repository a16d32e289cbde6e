"""The asymmetric adversarial loss: what gets gradients, real is less noisy than fake, the branch off is
plain STD, losses are logged, resume stays exact."""

import json
import shutil

import pytest
import torch
from conftest import losses, small
from conftest import start_run as _run

from stdtrt.distill.adversarial import diff_augment, real_level, to_dino_input
from stdtrt.distill.trainer import distill

ADV = dict(adv_weight=0.7, adv_model="tiny-dinov2")


def test_real_is_always_less_noisy_than_fake():
    g = torch.Generator().manual_seed(0)
    s = torch.randint(1, 1000, (20_000,), generator=g)
    r = real_level(s, g, "asymmetric")
    assert (r < s).all() and (r >= 0).all() and r.float().mean() < s.float().mean() * 0.6
    assert torch.equal(real_level(s, g, "symmetric"), s)
    assert real_level(torch.zeros(3, dtype=torch.long), g, "asymmetric").tolist() == [0, 0, 0]


def test_augment_and_dino_input_shapes():
    x = torch.rand(3, 3, 64, 48) * 2 - 1
    a = diff_augment(x, torch.Generator().manual_seed(1))
    b = diff_augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    big = to_dino_input(torch.zeros(2, 3, 300, 300), torch.Generator().manual_seed(0))
    assert big.shape == (2, 3, 224, 224)
    # mid-grey [-1, 1] -> 0.5 -> ImageNet-normalised
    assert abs(float(big[0, 0, 0, 0]) - (0.5 - 0.485) / 0.229) < 1e-5


def test_gradients_go_to_the_heads_and_the_lora_only(data_dir, tmp_path):
    from stdtrt import schedule

    run = _run(small(data_dir, tmp_path / "r", lora_rank=4, **ADV))
    adv = run.adv
    dino = list(adv.disc.dino.parameters())
    assert all(not p.requires_grad for p in dino)
    # the generator loss alone reaches the LoRA weights and nothing else of the UNet or the VAE
    _, b = run._batch()
    t = schedule.grid_time_tensor(b["n"])
    cond = run.prompts.map(lambda x: x[b["prompt"]])
    eps = run.unet(b["x"], t, **cond.unet_kwargs(), return_dict=False)[0]
    a_t, b_t = schedule.coefficients_tensor(run.abar, t)
    s = torch.full_like(t, 399)
    a_s, b_s = schedule.coefficients_tensor(run.abar, s)
    pred = schedule.ddim_jump(b["x"], eps, a_t, b_t, a_s, b_s)
    loss_g, _ = adv.generator_loss(pred, s, b["z0"], b["prompt"], run.abar)
    loss_g.backward()
    lora_grads = [p.grad for p in run.lora_params.values()]
    assert any(g is not None and g.abs().sum() > 0 for g in lora_grads)
    others = [n for n, p in run.raw_unet.named_parameters() if "lora" not in n and p.grad is not None]
    assert others == [] and all(p.grad is None for p in run.model.vae.parameters())
    assert all(p.grad is None for p in dino)
    # the discriminator step changes the heads and never DINOv2
    heads_before = [p.detach().clone() for p in adv.disc.head_parameters()]
    dino_before = [p.detach().clone() for p in dino]
    metrics = adv.discriminator_step(b["z0"], s, b["prompt"], run.abar)
    assert {"loss_d", "d_real", "d_fake", "gp"} <= set(metrics)
    assert any(not torch.equal(a, p) for a, p in zip(heads_before, adv.disc.head_parameters(), strict=True))
    assert all(torch.equal(a, p) for a, p in zip(dino_before, dino, strict=True))


def test_branch_off_loads_nothing_and_leaves_std_untouched(data_dir, tmp_path):
    assert _run(small(data_dir, tmp_path / "off", adv_weight=0.0)).adv is None
    distill(small(data_dir, tmp_path / "plain", max_steps=3), progress=False)
    # the branch on, at a weight too small to move Adam's steps: STD's batches and losses must not change
    distill(
        small(data_dir, tmp_path / "tiny", max_steps=3, adv_weight=1e-12, adv_model="tiny-dinov2"),
        progress=False,
    )
    plain = losses(tmp_path / "plain")
    records = [json.loads(x) for x in (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss_std"] for r in records] == pytest.approx(plain, rel=1e-5)
    assert all("loss_g" in r and "loss_d" in r for r in records)


def test_resume_with_the_adversarial_branch_is_exact(data_dir, tmp_path):
    cfg = small(data_dir, tmp_path / "a", max_steps=4, checkpoint_every=2, **ADV)
    distill(cfg, progress=False)
    split = tmp_path / "b"
    shutil.copytree(tmp_path / "a", split)
    shutil.rmtree(split / "checkpoints" / "step-000004")
    distill(small(data_dir, split, max_steps=4, checkpoint_every=2, **ADV), resume=True, progress=False)
    assert losses(tmp_path / "a") == losses(split)


def test_reduced_decode_and_subset(data_dir, tmp_path):
    run = _run(small(data_dir, tmp_path / "r", adv_decode_size=16, adv_max_images=1, **ADV))
    metrics = run.optimise()
    assert run.adv._last_fake.shape == (1, 3, 16, 16)
    assert "loss_g" in metrics and "loss_d" in metrics


def test_every_process_starts_from_the_same_heads(data_dir, tmp_path):
    from stdtrt.distill.adversarial import AdversarialLoss

    run = _run(small(data_dir, tmp_path / "r", **ADV))
    pooled = run.adv.pooled_text
    heads = []
    for global_seed in (1, 2):  # what differs between ranks: the global RNG state
        torch.manual_seed(global_seed)
        adv = AdversarialLoss(run.cfg, run.model, run.device, run.acc, pooled)
        heads.append(adv.disc.heads.state_dict())
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])


def test_the_adversarial_branch_decodes_with_taesd_when_asked(data_dir, tmp_path):
    """--adv-vae tiny-taesd: fake and real are decoded by TAESD (AutoencoderTiny, scaling factor 1: it reads
    the model's scaled latents as they are), the model's own VAE still encodes the data, gradients still
    reach the LoRA only."""
    from diffusers import AutoencoderTiny

    from stdtrt.models.vae import vae_decode, vae_preset

    run = _run(small(data_dir, tmp_path / "r", adv_vae="tiny-taesd", **ADV))
    assert isinstance(run.adv.vae, AutoencoderTiny) and not isinstance(run.model.vae, AutoencoderTiny)
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    expected = vae_decode(vae_preset("tiny-taesd"), z, 1.0)  # built here, independently
    assert expected.shape == (2, 3, 32, 32) and torch.allclose(run.adv._decode(z), expected, atol=1e-6)
    full = _run(small(data_dir, tmp_path / "full", **ADV))
    assert not torch.allclose(full.adv._decode(z), expected, atol=1e-3)  # the full VAE is another decoder
    metrics = run.optimise()
    assert {"loss_g", "loss_d"} <= set(metrics) and all(p.grad is None for p in run.adv.vae.parameters())


@pytest.mark.parametrize("precision,rtol", [("fp16", 0.02), ("bf16", 0.1)])
def test_the_taesd_adversarial_branch_under_mixed_precision_matches_fp32(precision, rtol, data_dir, tmp_path):
    """TAESD runs in the half dtype (force_upcast false), the decoded images and the generator loss stay
    within rounding of float32's."""
    from accelerate.state import AcceleratorState

    got = {}
    try:
        for mp in ("no", precision):
            AcceleratorState._reset_state(True)
            run = _run(small(data_dir, tmp_path / mp, mixed_precision=mp, adv_vae="tiny-taesd", **ADV))
            if mp != "no":
                assert next(run.adv.vae.parameters()).dtype != torch.float32
            got[mp] = run.optimise()
    finally:
        AcceleratorState._reset_state(True)
    for key in ("loss_std", "loss_g"):
        assert got[precision][key] == pytest.approx(got["no"][key], rel=rtol, abs=1e-4), key
