"""SGD with iteration-based polynomial ("poly") learning-rate decay.

DeepLabv3 Sec. 4.1 (and all five papers): ``lr_k = base_lr * (1 - k / max_steps) ** power`` at
optimizer step ``k``, here floored at ``min_lr`` and optionally preceded by a linear warm-up from
``warmup_start_factor * base_lr``. The scheduler is stepped after every optimizer step
(``interval: "step"``), so the LR at step k is exact whatever the epoch length.
Head parameters may get ``head_lr_mult`` times the base LR (10x in several papers), and BN and bias
parameters may be exempted from weight decay.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

_NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


@dataclass
class PolySchedule:
    """Optimizer and LR-schedule settings; :meth:`build` makes the torch objects."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    power: float = 0.9
    min_lr: float = 0.0
    warmup_steps: int = 0
    warmup_start_factor: float = 0.1
    head_lr_mult: float = 1.0
    no_decay_norm_bias: bool = False

    def lr_factor(self, step: int, max_steps: int) -> float:
        """Multiplier of the base LR after ``step`` optimizer steps out of ``max_steps``."""
        if max_steps <= 0:
            raise ValueError(f"poly decay needs trainer.max_steps > 0, got {max_steps}")
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            return self.warmup_start_factor + (1.0 - self.warmup_start_factor) * alpha
        progress = min(step, max_steps) / max_steps
        factor = (1.0 - progress) ** self.power
        return max(factor, self.min_lr / self.lr) if self.lr > 0 else factor

    def param_groups(self, backbone: nn.Module, heads: Iterable[nn.Module]) -> list[dict]:
        """Split parameters into backbone/head groups, each with and without weight decay. Each group is
        named (``backbone``, ``head``, ``backbone_no_decay``, ...): the dashboards' LR curves carry the name."""
        groups: list[dict] = []
        for part, modules, mult in (("backbone", [backbone], 1.0), ("head", list(heads), self.head_lr_mult)):
            decay, no_decay = _split_decay(modules, self.no_decay_norm_bias)
            for params, wd, suffix in ((decay, self.weight_decay, ""), (no_decay, 0.0, "_no_decay")):
                if params:
                    groups.append({"params": params, "lr": self.lr * mult, "weight_decay": wd,
                                   "name": part + suffix})
        return groups

    def build(
        self, backbone: nn.Module, heads: Iterable[nn.Module], max_steps: int
    ) -> tuple[torch.optim.Optimizer, LambdaLR]:
        """SGD over :meth:`param_groups` and a per-step LambdaLR applying :meth:`lr_factor`."""
        optimizer = torch.optim.SGD(
            self.param_groups(backbone, heads),
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            nesterov=self.nesterov,
        )
        scheduler = LambdaLR(optimizer, lambda step: self.lr_factor(step, max_steps))
        return optimizer, scheduler


def _split_decay(modules: list[nn.Module], exempt_norm_bias: bool) -> tuple[list, list]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in modules:
        for sub in module.modules():
            for name, param in sub.named_parameters(recurse=False):
                if not param.requires_grad:
                    continue
                exempt = exempt_norm_bias and (isinstance(sub, _NORM_TYPES) or name == "bias")
                (no_decay if exempt else decay).append(param)
    return decay, no_decay
