"""Bop, the binary optimizer (Helwegen et al., NeurIPS 2019): +-1 weights with no latent ones.

A latent weight's magnitude is only inertia, how many steps its sign resists the gradient;
Bop states that directly: each binary weight keeps an exponential moving average of its
gradient and flips when that average points the way the weight does (a descent step would
move it through zero) and is large enough. "Large enough" is measured against the average
of the squared gradient, as in the second-order Bop of Suarez-Ramirez et al. (2021): CNV's
layers' gradients differ by three orders of magnitude (conv1's ~1e-3, conv6's ~1e-6), so one
absolute threshold would flip one layer often and another never; m / sqrt(v) lies in [-1, 1]
whatever the scale (both averages share one rate) and says how consistently the gradient
asks for the flip. Every other parameter (the norms' scales and offsets) learns with Adam.
`train --optimizer bop` uses it for the binary stage.
"""

from __future__ import annotations

import math

import torch


class Bop(torch.optim.Optimizer):
    """One parameter group in the network's own order (so a portable file names each state by
    its parameter); the binary weights, given as `binary`, follow Bop's rule, the rest Adam's.

    `gamma` is the moving averages' rate at the peak learning rate: each step uses
    gamma x lr / peak_lr, so the schedule that anneals Adam's steps also lengthens the average
    (fewer, surer flips late in the run, as the paper's decayed gamma does). `threshold`
    bounds |m| / sqrt(v), between 0 and 1."""

    def __init__(self, params, binary, lr: float, gamma: float, threshold: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if not 0 < gamma <= 1 or not 0 <= threshold < 1:
            raise ValueError(f"Bop needs 0 < gamma <= 1 and 0 <= threshold < 1, not {gamma} and {threshold}")
        super().__init__(params, dict(lr=lr, peak_lr=lr, gamma=gamma, threshold=threshold,
                                      betas=betas, eps=eps))
        self.binary = {id(p) for p in binary}
        self.flips = torch.zeros((), dtype=torch.int64)  # since the last take_flips()

    def take_flips(self) -> int:
        """How many binary weights flipped since the last call."""
        flips, self.flips = int(self.flips), torch.zeros((), dtype=torch.int64)
        return flips

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if id(p) in self.binary:
                    self._flip(p, group)
                else:
                    self._adam(p, group)

    def _stepped_state(self, p: torch.Tensor, averages: tuple[str, str]) -> dict:
        """p's state, its step count advanced, its two averages zero at the first step."""
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            for key in averages:
                state[key] = torch.zeros_like(p)
        state["step"] += 1
        return state

    def _flip(self, p: torch.Tensor, group: dict) -> None:
        state = self._stepped_state(p, ("momentum", "square"))
        gamma = group["gamma"] * group["lr"] / group["peak_lr"]
        momentum = state["momentum"].lerp_(p.grad, gamma)
        square = state["square"].lerp_(p.grad.square(), gamma)
        consistent = momentum.abs() > square.sqrt().mul_(group["threshold"]).add_(1e-30)
        flip = consistent & ((momentum >= 0) == (p >= 0))
        p.mul_(1 - 2 * flip.to(p.dtype))  # +-1 stays +-1: the flipped ones change sign
        self.flips += flip.sum().cpu()

    def _adam(self, p: torch.Tensor, group: dict) -> None:
        state = self._stepped_state(p, ("exp_avg", "exp_avg_sq"))
        beta1, beta2 = group["betas"]
        t = float(state["step"])
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2 ** t)).add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1 ** t))
