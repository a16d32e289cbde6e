"""One training step as a pure function (std.md, "One training step", steps 2 to 5): the batch, the
three noise predictors and a generator in; the loss, the student's jump, the target and the bank's next
states out. Nothing here holds state: the trainer draws the batch from the bank, steps the optimiser and
writes the teacher's states back (distill/run.py).

Per batch element at grid index n (state x at t_n):
  student:  pred   = jump(x, t_n, s, e_theta(x, t_n, c))           s = t_{s_idx - 1}, s_idx chosen by the mode
  teacher:  x_next = jump(x, t_n, t_{n-1}, e_c + w (e_c - e_u))     one guided DDIM step, no grad
  target:   target = jump(x_next, t_{n-1}, s, e'(x_next, t_{n-1}, c))  the stop-gradient student (or EMA)
  loss:     mean(sqrt((pred - target)^2 + c^2) - c)                  fused with the student's jump

The modes differ only in where the states come from and where the jump lands (`MODES` below): STD is
the method; LCM, TCD and PCM are its baselines, written as the same step with their own choice of s, so
that the fidelity benchmark compares methods, not trainers. s_idx = n lands on t_{n-1}, where the target
is the teacher's own step x_next (the jump from a state to its own time is the identity): TCD and PCM
reach that boundary; STD's window {n - R, ..., n - 1} stops one step short of it unless `teacher_target`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from stdtrt import schedule
from stdtrt.models.conditioning import Conditioning

MODES = {
    "std": "Single Trajectory Distillation (Xu et al., arXiv 2412.18945): states on the teacher's own "
    "trajectories from x_start at t_{n_eta} (the bank walks them one teacher step per visit); s_idx uniform "
    "in the window {n - R, ..., n - 1}, R = ceil(N eta rho).",
    "lcm": "Latent Consistency Models (Luo et al., arXiv 2310.04378): forward-noised states a z0 + b noise "
    "at a random grid index; every jump lands on the clean end (s_idx = 0, s = 0).",
    "tcd": "Trajectory Consistency Distillation (Zheng et al., arXiv 2402.19159): forward-noised states "
    "like LCM, but the trajectory consistency function maps to any s on the way down, s_idx uniform in "
    "{0, ..., n}; its DDIM (first-order exponential-integrator) jump to s is TCD's semi-linear "
    "parameterisation. Sampled with strategic stochastic sampling (gamma > 0, TCD's default 0.3).",
    "pcm": "Phased Consistency Models (Wang et al., arXiv 2405.18407): forward-noised states like LCM; the "
    "trajectory is cut into phases and each state jumps to the lower edge of its own phase, one target per "
    "phase. The phases are the NFE-step plan from x_start (--nfe-hint steps at --strength), so a PCM "
    "student is trained for exactly the jumps that plan takes.",
}
FORWARD_NOISED = ("lcm", "tcd", "pcm")  # the baselines: no trajectory from x_start, no bank


@dataclass(frozen=True)
class StepPlan:
    """What a step needs to know of the run: the schedule, the window, the loss."""

    abar: torch.Tensor  # alphabar_t, t = 0..T-1
    num_steps: int  # N, the teacher grid
    window_r: int  # R: how far below n a target may land
    mode: str  # one of MODES
    huber_c: float
    phase_edges: tuple[int, ...] = (0,)  # pcm: the s_idx each phase lands on (ascending, from 0)
    teacher_target: bool = False  # std: the window reaches s_idx = n (the teacher's own step as target)
    eps_units: bool = False  # the loss in noise units: each jump's distance divided by its eps coefficient


@dataclass
class Batch:
    """Trajectory states and what each one carries (its own prompt, content latent and guidance)."""

    x: torch.Tensor  # (B, 4, h, w) float32 (clips: (B, 4, F, h, w)): the states, at grid index n
    n: torch.Tensor  # (B,) grid indices
    z0: torch.Tensor  # like x: the content latents they started from
    w: torch.Tensor  # (B,) teacher guidance
    prompt: torch.Tensor  # (B,) index into the run's prompt table
    cond: Conditioning  # (B, ...) the prompt conditioning
    uncond: Conditioning  # (B, ...) the empty prompt's


@dataclass
class StepResult:
    loss: torch.Tensor  # the pseudo-Huber STD loss (with grad to the student)
    pred: torch.Tensor  # the student's jump to s (with grad; the adversarial branch decodes it)
    target: torch.Tensor  # the target at s (no grad)
    s: torch.Tensor  # (B,) the target timesteps
    x_next: torch.Tensor  # the teacher's states at n - 1 (what goes back into the bank)
    n_next: torch.Tensor  # n - 1


# The noise predictors the step calls: (x, t, cond) -> eps (float32); the teacher's also takes the
# unconditional conditioning and the guidance w.
Predictor = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]
TeacherPredictor = Callable[
    [torch.Tensor, torch.Tensor, Conditioning, Conditioning, torch.Tensor], torch.Tensor
]


def target_index(n: torch.Tensor, plan: StepPlan, generator: torch.Generator) -> torch.Tensor:
    """s_idx per batch element (the jump lands on s = t_{s_idx - 1}), as the mode defines it (MODES)."""
    if plan.mode == "lcm":
        return torch.zeros_like(n)
    if plan.mode == "tcd":
        return schedule.sample_target_index(n + 1, plan.num_steps, generator)  # U{0, ..., n}
    if plan.mode == "pcm":
        return schedule.phase_edge(n, plan.phase_edges)
    if plan.teacher_target:
        return schedule.sample_target_index(n + 1, plan.window_r + 1, generator)  # U{n - R, ..., n}
    return schedule.sample_target_index(n, plan.window_r, generator)


def std_step(
    batch: Batch,
    student: Predictor,
    target_net: Predictor,
    teacher: TeacherPredictor,
    plan: StepPlan,
    generator: torch.Generator,
    loss_fn,
) -> StepResult:
    """One step on `batch` (see the module doc). `loss_fn(x, eps, target, a_t, b_t, a_s, b_s, c)`
    returns (loss, pred): distill/losses.py's fused jump + pseudo-Huber."""
    n, x = batch.n, batch.x.float()
    T = plan.abar.shape[0]
    t = schedule.grid_time_tensor(n, T, plan.num_steps)
    t_prev = schedule.grid_time_tensor(n - 1, T, plan.num_steps)
    s_idx = target_index(n, plan, generator)
    s = schedule.grid_time_tensor(s_idx - 1, T, plan.num_steps)
    a_t, b_t = schedule.coefficients_tensor(
        plan.abar, t, x.ndim
    )  # images (B, 4, h, w), clips (B, 4, F, h, w)
    a_p, b_p = schedule.coefficients_tensor(plan.abar, t_prev, x.ndim)
    a_s, b_s = schedule.coefficients_tensor(plan.abar, s, x.ndim)

    eps = student(x, t, batch.cond)  # with grad
    with torch.no_grad():
        x_next = schedule.ddim_jump(x, teacher(x, t, batch.cond, batch.uncond, batch.w), a_t, b_t, a_p, b_p)
        target = schedule.ddim_jump(x_next, target_net(x_next, t_prev, batch.cond), a_p, b_p, a_s, b_s)
    if not plan.eps_units:
        loss, pred = loss_fn(x, eps, target, a_t, b_t, a_s, b_s, plan.huber_c)
        return StepResult(loss, pred, target, s, x_next, n - 1)
    # pred - target in noise units: the jump is linear in eps with slope k = b_s - a_s b_t / a_t (< 0), so
    # (pred - target) / |k| is the student's eps minus the eps that would land exactly on the target
    k = schedule.jump_eps_coefficient(a_t, b_t, a_s, b_s).abs()  # (B, 1, 1, 1)
    loss, scaled = loss_fn(x, eps, target / k, a_t, b_t, a_s / k, b_s / k, plan.huber_c)
    return StepResult(loss, scaled * k, target, s, x_next, n - 1)
