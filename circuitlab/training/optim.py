"""Element-wise optimizers over stacked parameters (leading model axis M).

Each model in a stack has its own hyperparameters (lr, weight decay, betas, Grokfast), held as
(M,) tensors, and every operation is element-wise or reduces within one model's slice, so a
model updated in a stack of N gets exactly the update it would get alone. Gradient clipping is
per model (a global norm over the whole stack would couple the models).

Step, in order: (1) Grokfast-EMA filter g <- g + lambda * ema, ema <- alpha ema + (1-alpha) g
(Lee et al. 2024, "Grokfast"); (2) per-model clipping of the filtered gradient; (3) AdamW
(decoupled weight decay, bias-corrected moments) or Lion (sign of interpolated momentum).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from circuitlab.training.recipe import Recipe


@dataclass
class StackedHyper:
    """Per-model hyperparameters as (M,) float tensors."""

    lr: torch.Tensor
    weight_decay: torch.Tensor
    beta1: torch.Tensor
    beta2: torch.Tensor
    eps: torch.Tensor
    warmup: torch.Tensor
    clip: torch.Tensor
    gf_alpha: torch.Tensor
    gf_lambda: torch.Tensor
    anneal: torch.Tensor

    @classmethod
    def from_recipes(cls, recipes: Sequence[Recipe]) -> StackedHyper:
        def col(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32)

        return cls(
            lr=col([r.lr for r in recipes]),
            weight_decay=col([r.weight_decay for r in recipes]),
            beta1=col([r.betas[0] for r in recipes]),
            beta2=col([r.betas[1] for r in recipes]),
            eps=col([r.eps for r in recipes]),
            warmup=col([r.warmup_steps for r in recipes]),
            clip=col([r.grad_clip for r in recipes]),
            gf_alpha=col([r.grokfast_alpha for r in recipes]),
            gf_lambda=col([r.grokfast_lambda for r in recipes]),
            anneal=col([r.anneal_steps for r in recipes]),
        )

    def select(self, keep: torch.Tensor) -> StackedHyper:
        return StackedHyper(**{k: v[keep] for k, v in vars(self).items()})


def _per_model(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(M,) -> (M, 1, ..., 1) broadcastable against a stacked parameter."""
    return x.view(-1, *([1] * (like.dim() - 1)))


class StackedOptimizer:
    """AdamW or Lion with Grokfast, over a dict of stacked leaf tensors."""

    STATE_KEYS = ("exp_avg", "exp_avg_sq", "grokfast")

    def __init__(self, params: dict[str, torch.Tensor], hyper: StackedHyper, kind: str) -> None:
        self.params = params
        self.hyper = hyper
        self.kind = kind
        self.step_count = 0
        # the step each model reached its stop accuracy and began annealing (inf: not yet)
        self.anneal_from = torch.full_like(hyper.lr, math.inf)
        self.state: dict[str, dict[str, torch.Tensor]] = {
            key: {n: torch.zeros_like(p) for n, p in params.items()} for key in self.STATE_KEYS
        }

    @torch.no_grad()
    def step(self) -> None:
        h = self.hyper
        grads = {n: p.grad for n, p in self.params.items()}
        if torch.any(h.gf_lambda > 0):
            for n, g in grads.items():
                ema = self.state["grokfast"][n]
                a = _per_model(h.gf_alpha, g)
                ema.mul_(a).add_((1 - a) * g)
                g.add_(_per_model(h.gf_lambda, g) * ema)
        if torch.any(h.clip > 0):
            sq = sum(g.pow(2).flatten(1).sum(1) for g in grads.values())
            norm = sq.sqrt()
            scale = torch.where(h.clip > 0, (h.clip / (norm + 1e-6)).clamp(max=1.0), 1.0)
            for g in grads.values():
                g.mul_(_per_model(scale, g))
        self.step_count += 1
        lr = self.lr_now_for_step(self.step_count)
        t = float(self.step_count)
        for n, p in self.params.items():
            g = grads[n]
            m, v = self.state["exp_avg"][n], self.state["exp_avg_sq"][n]
            lr_p, b1, b2 = (_per_model(x, p) for x in (lr, h.beta1, h.beta2))
            p.mul_(1 - lr_p * _per_model(h.weight_decay, p))
            if self.kind == "lion":
                update = (b1 * m + (1 - b1) * g).sign_()
                p.sub_(lr_p * update)
                m.mul_(b2).add_((1 - b2) * g)
            else:
                m.mul_(b1).add_((1 - b1) * g)
                v.mul_(b2).addcmul_((1 - b2) * g, g)
                m_hat = m / (1 - b1**t)
                denom = (v / (1 - b2**t)).sqrt_().add_(_per_model(h.eps, p))
                p.sub_(lr_p * m_hat / denom)

    def lr_now_for_step(self, step: int) -> torch.Tensor:
        """Per-model learning rate at optimizer step `step` (1-based): linear warmup, then
        constant, then (once a model anneals from step s) (1 - (step - s - 1) / anneal) of it."""
        h = self.hyper
        ramp = torch.where(h.warmup > 0, (step / h.warmup).clamp(max=1.0), 1.0)
        annealing = torch.isfinite(self.anneal_from) & (h.anneal > 0)
        since = (step - 1 - self.anneal_from).clamp(min=0.0)
        decay = torch.where(annealing, (1 - since / h.anneal.clamp(min=1.0)).clamp(min=0.0), 1.0)
        return h.lr * ramp * decay

    def start_anneal(self, i: int, step: int) -> None:
        """Model i reached its stop accuracy after `step` steps: decay its lr from here."""
        self.anneal_from[i] = float(step)

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def select(self, keep: torch.Tensor, params: dict[str, torch.Tensor]) -> None:
        """Keep only the models at `keep` (after early-stopped models leave the stack)."""
        self.params = params
        self.hyper = self.hyper.select(keep)
        self.anneal_from = self.anneal_from[keep]
        for key in self.STATE_KEYS:
            self.state[key] = {n: t[keep] for n, t in self.state[key].items()}
