"""schedule.py: golden grid integers (worked out by hand from std.md's formulas), the DDIM jump's
algebra, and equivalence of our NFE-step sampler with diffusers' own TCDScheduler img2img pipeline."""

import math

import pytest
import torch

from stdtrt import schedule
from stdtrt.errors import StdtrtError
from stdtrt.models.presets import SCHEDULER_CONFIG


def test_teacher_grid():
    grid = schedule.grid_timesteps()
    assert len(grid) == 50
    assert grid[:3] == [19, 39, 59] and grid[-1] == 999
    assert schedule.grid_time(-1) == 0  # "s = 0"


@pytest.mark.parametrize(
    "eta,n,t", [(0.75, 38, 779), (0.65, 33, 679), (0.95, 48, 979), (1.0, 49, 999), (0.02, 1, 39)]
)
def test_start_index(eta, n, t):
    assert schedule.start_index(eta) == n
    assert schedule.grid_time(n) == t


def test_student_timesteps_nfe4_and_nfe8():
    abar = schedule.alphas_cumprod(SCHEDULER_CONFIG)
    p4 = schedule.student_plan(abar, 0.75, 4)
    assert schedule.student_indices(0.75, 4) == [38, 29, 19, 10]
    assert p4.timesteps == (779, 599, 399, 219)
    assert p4.targets == (599, 399, 219, 0)
    p8 = schedule.student_plan(abar, 0.75, 8)
    assert p8.timesteps == (779, 679, 599, 499, 399, 299, 219, 119)
    assert schedule.window(0.75, 0.5) == 19 and schedule.window(0.75, 0.3) == 12


def test_nfe4_jumps_stay_inside_the_trained_window():
    # std.md: with NFE 4 at eta 0.75 every inference jump is one the student was trained on.
    n, r = schedule.start_index(0.75), schedule.window(0.75, 0.5)
    idx = [*schedule.student_indices(0.75, 4), -1]
    for here, there in zip(idx, idx[1:], strict=False):
        # training draws s_idx in [n - R, n - 1] and jumps to t_{s_idx - 1}; "there" = s_idx - 1
        assert here - r <= there + 1 <= here - 1
    assert n == idx[0]


def test_unservable_nfe_is_refused():
    with pytest.raises(StdtrtError, match="nfe"):
        schedule.student_indices(0.1, 10)  # start is grid step 5: at most 6 steps
    with pytest.raises(StdtrtError):
        schedule.student_indices(0.75, 0)


def test_alphas_come_from_the_scheduler_config():
    abar = schedule.alphas_cumprod(SCHEDULER_CONFIG)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(abar.double(), torch.cumprod(1 - betas, 0), atol=1e-6)
    with pytest.raises(StdtrtError, match="epsilon"):
        schedule.alphas_cumprod({**SCHEDULER_CONFIG, "prediction_type": "v_prediction"})


def test_ddim_jump_with_the_true_noise_lands_on_the_forward_process():
    g = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    abar = schedule.alphas_cumprod(SCHEDULER_CONFIG)
    a_t, b_t = schedule.coefficients(abar, 779)
    a_s, b_s = schedule.coefficients(abar, 219)
    x_t = schedule.x_start(z0, eps, a_t, b_t)
    assert torch.allclose(schedule.ddim_jump(x_t, eps, a_t, b_t, a_s, b_s), a_s * z0 + b_s * eps, atol=1e-5)
    assert math.isclose(a_s**2 + b_s**2, 1.0, rel_tol=1e-6)


def test_renoise_matches_the_forward_process_marginal():
    # x at level abar 0.5 around clean value 1; re-noised to level 0.2 it must look like a level-0.2 sample
    g = torch.Generator().manual_seed(1)
    x = math.sqrt(0.5) * 1.0 + math.sqrt(0.5) * torch.randn(400_000, generator=g)
    y = schedule.renoise(x, torch.randn(400_000, generator=g), 0.5, 0.2)
    assert abs(float(y.mean()) - math.sqrt(0.2)) < 0.005
    assert abs(float(y.var()) - 0.8) < 0.005


def _diffusers_tcd_latents(model, z0, seed, plan, guidance, gamma, prompt):
    """diffusers' own img2img pipeline with TCDScheduler over the plan's timesteps (the one bench times),
    on latents: a 4-channel `image` is taken as scaled latents, no VAE."""
    from stdtrt.eval.baseline import img2img_pipeline

    pipe, kwargs = img2img_pipeline(model, plan, prompt, "", guidance, 64, 64)
    kwargs.update(eta=gamma, output_type="latent", generator=torch.Generator().manual_seed(seed))
    return pipe(image=z0, **kwargs).images


@pytest.mark.parametrize("kind", ["tiny_sd", "tiny_sdxl"])
@pytest.mark.parametrize("guidance,gamma", [(1.0, 0.0), (3.0, 0.0), (1.0, 0.3)])
def test_student_sampler_equals_diffusers_tcd(kind, guidance, gamma, request):
    from stdtrt.runtime.student import Student
    from stdtrt.schedule import make_noise

    model = request.getfixturevalue(kind)
    plan = schedule.student_plan(model.alphas_cumprod(), 0.75, 4, gamma=gamma)
    student = Student(
        model, plan, "an oil painting", 64, 64, negative_prompt="", guidance=max(guidance, 1.0001)
    )
    if guidance == 1.0:
        student.uncond, student.guidance = None, 1.0
    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    seed = 11
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((1, 4, 8, 8), generator=g)  # what diffusers draws first with this generator
    ours = student.sample(z0, noise, generator=g)
    theirs = _diffusers_tcd_latents(model, z0, seed, plan, guidance, gamma, "an oil painting")
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() < 1e-4
    assert make_noise((4, 8, 8), seed).equal(noise)


def test_teacher_walk_visits_every_grid_step_from_the_start():
    abar = schedule.alphas_cumprod(SCHEDULER_CONFIG)
    walk = schedule.teacher_walk_plan(abar, 0.75)
    assert walk.nfe == 39 and walk.timesteps[0] == 779 and walk.timesteps[-1] == 19
    assert list(walk.timesteps) == list(range(779, 0, -20)) and walk.targets[-1] == 0
