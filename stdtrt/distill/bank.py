"""The trajectory bank: partly walked teacher trajectories, so that each training step costs one teacher
step instead of a whole trajectory (std.md, "One training step", steps 1 and 6).

Each slot holds a trajectory's own state x, grid index n, content latent z0, guidance w, prompt index
(into the run's prompt table) and style index (into its style-image table, `--style-images`; 0 without):
a bank state is continued with the conditioning it started with. The bank
serves any batch size up to its size, never returns an empty slot, draws from its own seeded generator,
and its whole state goes into a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BankStats:
    from_bank: int = 0
    fresh: int = 0
    stored: int = 0
    dropped: int = 0  # fresh trajectories that found the bank full
    retired: int = 0

    def reset(self) -> None:
        self.__init__()


class TrajectoryBank:
    def __init__(
        self,
        size: int,
        latent_shape: tuple[int, ...],
        p_bank: float,
        w_range: tuple[float, float],
        seed: int,
        device: torch.device | str = "cpu",
    ):
        self.size, self.p_bank, self.w_range = size, p_bank, w_range
        self.x = torch.zeros((size, *latent_shape), device=device)
        self.z0 = torch.zeros((size, *latent_shape), device=device)
        self.n = torch.zeros(size, dtype=torch.long, device=device)
        self.w = torch.zeros(size, device=device)
        self.prompt = torch.zeros(size, dtype=torch.long, device=device)
        self.style = torch.zeros(size, dtype=torch.long, device=device)
        self.live = torch.zeros(size, dtype=torch.bool, device=device)
        self.generator = torch.Generator().manual_seed(seed)
        self.stats = BankStats()

    def __len__(self) -> int:
        return int(self.live.sum())

    def draw(self, batch: int) -> torch.Tensor:
        """Slots for a batch: each element continues a live trajectory with probability p_bank (distinct
        slots, as many as are live), else it is -1 (start a new trajectory)."""
        if batch > self.size:
            raise ValueError(f"batch {batch} larger than the bank ({self.size})")
        wants = torch.rand(batch, generator=self.generator) < self.p_bank
        live = self.live.nonzero().flatten().cpu()
        chosen = live[torch.randperm(len(live), generator=self.generator)][: int(wants.sum())]
        slots = torch.full((batch,), -1, dtype=torch.long)
        slots[wants.nonzero().flatten()[: len(chosen)]] = chosen
        self.stats.from_bank += len(chosen)
        self.stats.fresh += batch - len(chosen)
        return slots

    def new_guidance(self, count: int) -> torch.Tensor:
        lo, hi = self.w_range
        return lo + (hi - lo) * torch.rand(count, generator=self.generator)

    def get(self, slots: torch.Tensor) -> dict[str, torch.Tensor]:
        """The stored fields of the given (live) slots."""
        idx = slots.to(self.x.device)
        assert bool(self.live[idx].all()), "asked for an empty slot"
        return {
            "x": self.x[idx],
            "n": self.n[idx],
            "z0": self.z0[idx],
            "w": self.w[idx],
            "prompt": self.prompt[idx],
            "style": self.style[idx],
        }

    @torch.no_grad()
    def update(self, slots, x_next, n_next, z0, w, prompt, style=None) -> None:
        """Write each element's next state back: into its slot, or a free slot for a new trajectory (dropped
        when none is free); a trajectory whose index reaches 1 is retired and its slot freed. With p_bank 0
        nothing is stored: no state would ever be drawn again."""
        if self.p_bank == 0:
            return
        for i, slot in enumerate(slots.tolist()):
            if int(n_next[i]) <= 1:
                if slot >= 0:
                    self.live[slot] = False
                self.stats.retired += 1
                continue
            if slot < 0:
                free = (~self.live).nonzero().flatten()
                if len(free) == 0:
                    self.stats.dropped += 1
                    continue
                slot = int(free[0])
                self.z0[slot], self.w[slot], self.prompt[slot] = z0[i], w[i], prompt[i]
                self.style[slot] = 0 if style is None else style[i]
                self.live[slot] = True
                self.stats.stored += 1
            self.x[slot] = x_next[i].to(self.x.dtype)
            self.n[slot] = n_next[i]

    def state_dict(self) -> dict:
        return {
            "x": self.x.cpu(),
            "z0": self.z0.cpu(),
            "n": self.n.cpu(),
            "w": self.w.cpu(),
            "prompt": self.prompt.cpu(),
            "style": self.style.cpu(),
            "live": self.live.cpu(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["x"].shape != self.x.shape:
            raise ValueError(f"bank shape {tuple(state['x'].shape)} != {tuple(self.x.shape)}")
        for key in ("x", "z0", "n", "w", "prompt", "style", "live"):
            if key in state:  # a bank saved before style indices holds none: they stay 0
                getattr(self, key).copy_(state[key])
        self.generator.set_state(state["generator"])
