"""The diffusion math shared by distillation, export and every runtime backend (see shared/design/std.md).

Notation as in the paper: a(t) = sqrt(alphabar_t), b(t) = sqrt(1 - alphabar_t), epsilon prediction,
T = 1000 training timesteps. The teacher walks an N = 50 step DDIM grid t_n = k (n + 1) - 1 with k = T / N
(19, 39, ..., 999). Timestep 0 stands for "s = 0": a(0) = sqrt(alphabar_0), the first alphabar, not 1,
as in the LCM/TCD solvers, so indexing alphabar with 0 needs no special case.

No stage re-derives any of this: it is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from stdtrt.errors import StdtrtError

TEACHER_STEPS = 50  # N: the teacher's DDIM grid


def alphas_cumprod(scheduler_config: dict) -> torch.Tensor:
    """alphabar_t for t = 0..T-1 (float32, as diffusers computes it) from a teacher's scheduler config."""
    from diffusers import DDPMScheduler

    prediction = scheduler_config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise StdtrtError(
            f"the teacher predicts {prediction!r}; stdtrt supports epsilon-prediction models (SD 1.x, SDXL)"
        )
    return DDPMScheduler.from_config(dict(scheduler_config)).alphas_cumprod.to(torch.float32)


def grid_time(n: int, num_train_timesteps: int = 1000, num_steps: int = TEACHER_STEPS) -> int:
    """t_n = k (n + 1) - 1 on the teacher grid; n = -1 gives 0 ("s = 0", the clean end)."""
    if not -1 <= n < num_steps:
        raise ValueError(f"grid index {n} outside [-1, {num_steps})")
    return 0 if n < 0 else (num_train_timesteps // num_steps) * (n + 1) - 1


def grid_timesteps(num_train_timesteps: int = 1000, num_steps: int = TEACHER_STEPS) -> list[int]:
    """The teacher grid [t_0, ..., t_{N-1}] = [19, 39, ..., 999] for T = 1000, N = 50."""
    return [grid_time(n, num_train_timesteps, num_steps) for n in range(num_steps)]


def start_index(eta: float, num_steps: int = TEACHER_STEPS) -> int:
    """n_eta = min(N - 1, ceil(N eta)): the grid index of the img2img start state (38 for eta 0.75)."""
    return min(num_steps - 1, math.ceil(num_steps * eta - 1e-9))


def window(eta: float, rho: float, num_steps: int = TEACHER_STEPS) -> int:
    """R = ceil(N eta rho): how many grid steps below the current one a training target may reach."""
    return max(1, math.ceil(num_steps * eta * rho - 1e-9))


def coefficients(abar: torch.Tensor, t: int) -> tuple[float, float]:
    """(a(t), b(t)) = (sqrt(alphabar_t), sqrt(1 - alphabar_t)) as Python floats."""
    ab = abar[int(t)]
    return float(ab.sqrt()), float((1 - ab).sqrt())


def make_noise(shape, seed: int, count: int = 1) -> torch.Tensor:
    """Seeded standard normal noise (count, *shape), identical on every device (drawn on the CPU)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((count, *shape), generator=g, dtype=torch.float32)


def frame_noise(rule: str, shape, seed: int, first: int, count: int) -> torch.Tensor:
    """The noise of frames first .. first + count - 1 of a video (or clip) seeded by `seed`, by a noise
    rule (config.NOISE_RULES): "shared", one noise for every frame (a still scene stays still);
    "per-frame", each frame its own, seeded by the seed and the frame's index (so a frame gets the same
    noise in every window it is part of).  # (count, *shape) float32 on the CPU"""
    if rule == "shared":
        return make_noise(shape, seed).expand(count, *shape)
    if rule == "per-frame":
        return torch.cat([make_noise(shape, seed * 1_000_003 + first + i) for i in range(count)])
    raise StdtrtError(f"unknown noise rule {rule!r}")


def x_start(z0: torch.Tensor, noise: torch.Tensor, a, b) -> torch.Tensor:
    """The fixed partial-noise state x_{tau_eta} = a z0 + b noise.  # (B, 4, H/8, W/8)
    Any forward-noised state is the same formula: a and b may be floats or (B, 1, 1, 1) tensors."""
    return a * z0 + b * noise


def ddim_jump(x, eps, a_t, b_t, a_s, b_s):
    """DDIM jump from (x, t) to s with noise estimate eps (floats or broadcastable tensors)."""
    x0 = (x - b_t * eps) / a_t  # predicted clean latent
    return a_s * x0 + b_s * eps


def renoise(x: torch.Tensor, noise: torch.Tensor, abar_from: float, abar_to: float) -> torch.Tensor:
    """Forward-noise x from level abar_from to the noisier abar_to (TCD's gamma > 0 step)."""
    ratio = abar_to / abar_from
    return math.sqrt(ratio) * x + math.sqrt(1 - ratio) * noise


def student_indices(eta: float, nfe: int, num_steps: int = TEACHER_STEPS) -> list[int]:
    """The NFE grid indices the student visits: evenly spaced from n_eta towards 0 (38, 29, 19, 10 for
    eta 0.75, NFE 4). The jump after the last one lands on s = 0."""

    n_eta = start_index(eta, num_steps)
    if nfe < 1 or nfe > n_eta + 1:
        raise StdtrtError(
            f"nfe {nfe} cannot be served at strength {eta}: the start state is grid step {n_eta} of "
            f"{num_steps}, so nfe must be in [1, {n_eta + 1}]"
        )
    indices = [math.floor(n_eta * (1 - i / nfe) + 0.5) for i in range(nfe)]
    if len(set(indices)) != nfe:
        raise StdtrtError(
            f"nfe {nfe} at strength {eta} visits a grid step twice ({indices}); use a smaller nfe"
        )
    return indices


@dataclass(frozen=True)
class StudentPlan:
    """Everything a backend needs to run the NFE-step student: the fixed timesteps and jump coefficients.

    Step i evaluates the UNet at timesteps[i] and jumps to landing[i] (= targets[i] when gamma = 0; with
    gamma > 0 it lands at floor((1 - gamma) targets[i]) and is re-noised to targets[i]).
    """

    eta: float
    nfe: int
    gamma: float
    num_steps: int  # N, the teacher grid the student was distilled on (the LoRA's metadata says which)
    timesteps: tuple[int, ...]  # t_i the UNet sees, descending
    targets: tuple[int, ...]  # where each step ends: timesteps[i + 1], and 0 after the last
    landing: tuple[int, ...]  # where the DDIM jump lands before re-noising
    a_t: tuple[float, ...]
    b_t: tuple[float, ...]
    a_s: tuple[float, ...]  # at landing
    b_s: tuple[float, ...]
    abar_landing: tuple[float, ...]  # gamma > 0: re-noise each step from alphabar(landing[i]) ...
    abar_target: tuple[float, ...]  # ... to alphabar(targets[i])
    a_start: float  # x_start = a_start z0 + b_start noise, at timesteps[0]
    b_start: float

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def student_plan(
    abar: torch.Tensor, eta: float, nfe: int, gamma: float = 0.0, num_steps: int = TEACHER_STEPS
) -> StudentPlan:
    """The NFE-step TCD/DDIM plan from x_start at t_{n_eta} down to s = 0."""
    return plan_from_indices(abar, eta, student_indices(eta, nfe, num_steps), gamma, num_steps)


def teacher_walk_plan(abar: torch.Tensor, eta: float, num_steps: int = TEACHER_STEPS) -> StudentPlan:
    """The teacher's full DDIM walk from x_start: every grid step n_eta, n_eta - 1, ..., 0, then s = 0."""
    return plan_from_indices(abar, eta, list(range(start_index(eta, num_steps), -1, -1)), 0.0, num_steps)


def plan_from_indices(
    abar: torch.Tensor, eta: float, indices: list[int], gamma: float = 0.0, num_steps: int = TEACHER_STEPS
) -> StudentPlan:
    """A plan visiting the given descending grid indices, each jumping to the next, the last to s = 0."""
    T = abar.shape[0]
    nfe = len(indices)
    timesteps = [grid_time(n, T, num_steps) for n in indices]
    targets = [*timesteps[1:], 0]
    landing = [math.floor((1 - gamma) * s) for s in targets]
    a_t, b_t = zip(*(coefficients(abar, t) for t in timesteps), strict=True)
    a_s, b_s = zip(*(coefficients(abar, s) for s in landing), strict=True)
    return StudentPlan(
        eta=eta,
        nfe=nfe,
        gamma=gamma,
        num_steps=num_steps,
        timesteps=tuple(timesteps),
        targets=tuple(targets),
        landing=tuple(landing),
        a_t=tuple(a_t),
        b_t=tuple(b_t),
        a_s=tuple(a_s),
        b_s=tuple(b_s),
        abar_landing=tuple(float(abar[s]) for s in landing),
        abar_target=tuple(float(abar[s]) for s in targets),
        a_start=a_t[0],
        b_start=b_t[0],
    )


# -- batched forms for training (one grid index per batch element) --------------------------------------
def grid_time_tensor(n: torch.Tensor, num_train_timesteps: int = 1000, num_steps: int = TEACHER_STEPS):
    """t_n for a (B,) tensor of grid indices; -1 gives 0 ("s = 0")."""
    k = num_train_timesteps // num_steps
    return torch.where(n < 0, torch.zeros_like(n), k * (n + 1) - 1)


def coefficients_tensor(
    abar: torch.Tensor, t: torch.Tensor, ndim: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a(t), b(t)) for a (B,) tensor of timesteps, shaped (B, 1, ...) to broadcast over latents of `ndim`
    dimensions: 4 for images (B, 4, h, w), 5 for clips (B, 4, F, h, w)."""
    ab = abar.to(t.device)[t].view(-1, *([1] * (ndim - 1)))
    return ab.sqrt(), (1 - ab).sqrt()


def sample_target_index(n: torch.Tensor, window_r: int, generator: torch.Generator) -> torch.Tensor:
    """s_idx uniform in {max(0, n - R), ..., n - 1} per element; the target time is s = t_{s_idx - 1}."""
    lo = (n - window_r).clamp(min=0)
    u = torch.rand(n.shape, generator=generator).to(n.device)
    return lo + (u * (n - lo)).floor().long().clamp(max=(n - lo - 1).clamp(min=0))


def jump_eps_coefficient(a_t, b_t, a_s, b_s):
    """d jump / d eps = b_s - a_s b_t / a_t: how far the landing point moves per unit of noise estimate
    (negative for s < t; zero for s = t, where the jump is the identity)."""
    return b_s - a_s * b_t / a_t


def phase_edges(eta: float, nfe: int, num_steps: int = TEACHER_STEPS) -> tuple[int, ...]:
    """PCM's phases for the NFE-step plan from x_start: the s_idx each jump of that plan lands on, ascending
    (s = t_{s_idx - 1}; 0 is the clean end). For eta 0.75, NFE 4 (indices 38, 29, 19, 10): (0, 11, 20, 30)."""
    return tuple(sorted([0, *(n + 1 for n in student_indices(eta, nfe, num_steps)[1:])]))


def phase_edge(n: torch.Tensor, edges: tuple[int, ...]) -> torch.Tensor:
    """The lower edge of each state's phase: the largest edge <= n (a state on an edge lands one step
    below it, on t_{n-1})."""
    e = torch.tensor(edges, device=n.device)
    return e[(n.unsqueeze(-1) >= e).sum(-1) - 1]
