"""Muon for the Transformer's hidden weight matrices, AdamW for everything else, as one
optimizer, so the loop's schedule, clipping and checkpoints treat it like any other.

Muon (Jordan et al. 2024) replaces each matrix's momentum update by the nearest
semi-orthogonal matrix (a few Newton-Schulz iterations), so every direction of the
update moves at the same rate. Its step is scaled to AdamW's typical update size
(0.2 * sqrt(max(rows, cols)), Liu et al. 2025), so one learning rate serves both halves.
"""
from __future__ import annotations

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)   # the quintic of Muon's reference code


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U V^T of g = U S V^T (Newton-Schulz, on the wide orientation: cheaper)."""
    a, b, c = NS_COEFFICIENTS
    x = g / (g.norm() + 1e-7)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.t()
    for _ in range(steps):
        gram = x @ x.t()
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.t() if tall else x


class MuonWithAdamW(torch.optim.Optimizer):
    def __init__(self, named_params, lr: float, weight_decay: float, decays, momentum: float = 0.95,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8):
        """named_params: (name, parameter) pairs; the 2-D ones under `blocks.` get Muon.
        decays(name, p): whether AdamW applies weight decay to p."""
        named = [(n, p) for n, p in named_params if p.requires_grad]
        hidden = [p for n, p in named if p.dim() == 2 and n.startswith("blocks.")]
        rest = [(n, p) for n, p in named if not (p.dim() == 2 and n.startswith("blocks."))]
        groups = [{"params": hidden, "muon": True, "weight_decay": weight_decay},
                  {"params": [p for n, p in rest if decays(n, p)], "muon": False, "weight_decay": weight_decay},
                  {"params": [p for n, p in rest if not decays(n, p)], "muon": False, "weight_decay": 0.0}]
        super().__init__([g for g in groups if g["params"]],
                         {"lr": lr, "momentum": momentum, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, decay = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                p.mul_(1 - lr * decay)
                if group["muon"]:
                    if not state:
                        state["momentum"] = torch.zeros_like(p)
                    momentum = state["momentum"].lerp_(p.grad, 1 - group["momentum"])
                    nesterov = p.grad.lerp(momentum, group["momentum"])
                    p.add_(orthogonalize(nesterov), alpha=-lr * 0.2 * max(p.shape) ** 0.5)
                else:
                    if not state:
                        state["step"] = 0
                        state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                    beta1, beta2 = group["betas"]
                    state["step"] += 1
                    state["exp_avg"].lerp_(p.grad, 1 - beta1)
                    state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                    denom = (state["exp_avg_sq"] / (1 - beta2 ** state["step"])).sqrt_().add_(group["eps"])
                    p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1 ** state["step"]))
