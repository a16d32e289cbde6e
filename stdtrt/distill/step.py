"""One STD training step as a pure function (std.md, "One training step", steps 2 to 5): the batch, the
three noise predictors and a generator in; the loss, the student's jump, the target and the bank's next
states out. Nothing here holds state: the trainer draws the batch from the bank, steps the optimiser and
writes the teacher's states back (distill/trainer.py).

Per batch element at grid index n (state x at t_n):
  student:  pred   = jump(x, t_n, s, e_theta(x, t_n, c))           s = t_{s_idx - 1}, s_idx ~ U{n - R .. n - 1}
  teacher:  x_next = jump(x, t_n, t_{n-1}, e_c + w (e_c - e_u))     one guided DDIM step, no grad
  target:   target = jump(x_next, t_{n-1}, s, e'(x_next, t_{n-1}, c))  the stop-gradient student (or EMA)
  loss:     mean(sqrt((pred - target)^2 + c^2) - c)                  fused with the student's jump
In LCM mode (the baseline) s is always the clean end ("s = 0").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from stdtrt import schedule
from stdtrt.models.conditioning import Conditioning


@dataclass(frozen=True)
class StepPlan:
    """What a step needs to know of the run: the schedule, the window, the loss."""

    abar: torch.Tensor  # alphabar_t, t = 0..T-1
    num_steps: int  # N, the teacher grid
    window_r: int  # R: how far below n a target may land
    mode: str  # "std" or "lcm"
    huber_c: float


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


def std_step(
    batch: Batch,
    student: Predictor,
    target_net: Predictor,
    teacher: TeacherPredictor,
    plan: StepPlan,
    generator: torch.Generator,
    loss_fn,
) -> StepResult:
    """One STD step on `batch` (see the module doc). `loss_fn(x, eps, target, a_t, b_t, a_s, b_s, c)`
    returns (loss, pred): distill/losses.py's fused jump + pseudo-Huber."""
    n, x = batch.n, batch.x.float()
    T = plan.abar.shape[0]
    t = schedule.grid_time_tensor(n, T, plan.num_steps)
    t_prev = schedule.grid_time_tensor(n - 1, T, plan.num_steps)
    if plan.mode == "lcm":  # consistency distillation: always jump to the clean end
        s_idx = torch.zeros_like(n)
    else:
        s_idx = schedule.sample_target_index(n, plan.window_r, generator)
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
    loss, pred = loss_fn(x, eps, target, a_t, b_t, a_s, b_s, plan.huber_c)
    return StepResult(loss, pred, target, s, x_next, n - 1)
