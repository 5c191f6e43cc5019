"""Optimisers and learning-rate schedules built from :class:`~hareid.config.OptimConfig`.

Schedules are expressed in epochs in the config but are **stepped once per iteration**
(``scheduler.step()`` after every optimiser step): a linear warmup rises smoothly over
``warmup_epochs * iters_per_epoch`` iterations, cosine decays smoothly, and step/multistep decays
land exactly on epoch boundaries. Step/multistep milestones are absolute epochs (warmup included); ``step`` decays at every multiple
of ``step_size`` after the warmup.
Only ``torch.optim.lr_scheduler`` classes are used, so their ``state_dict`` resumes exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler as lrs

from hareid.config import OptimConfig
from hareid.errors import ConfigError

__all__ = ["build_optimizer", "build_scheduler", "current_lr"]


def build_optimizer(params: nn.Module | Iterable[torch.Tensor], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam, AMSGrad (Adam with ``amsgrad=True``) or SGD with momentum over trainable parameters.

    Given a model and ``cfg.backbone_lr_mult != 1``, two parameter groups: the head at ``cfg.lr``
    and the backbone (the model's ``param_groups()["backbone"]``) at ``cfg.lr * backbone_lr_mult``.

    Uses PyTorch's fused implementation (one kernel over all parameters) where it exists for the
    parameters' device (CPU, CUDA), else the default one: same update rule, one pass over HA-CNN's
    310 parameter tensors instead of one per tensor (``benchmarks/bench_model.py`` times it). State dicts are
    interchangeable between implementations, so checkpoints resume either way.
    """
    groups: list[dict[str, Any]] | None = None
    if isinstance(params, nn.Module):
        groups = _lr_groups(params, cfg)
        params = [p for p in params.parameters() if p.requires_grad]
    params = list(params)
    if cfg.name in ("adam", "amsgrad"):
        cls, kwargs = torch.optim.Adam, dict(
            lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), weight_decay=cfg.weight_decay,
            amsgrad=cfg.name == "amsgrad",
        )
    elif cfg.name == "sgd":
        cls, kwargs = torch.optim.SGD, dict(
            lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov and cfg.momentum > 0,
        )
    else:
        raise ConfigError(f"optim.name: unknown optimiser {cfg.name!r}; use adam, amsgrad or sgd")
    target: Any = groups if groups is not None else params
    if params and all(isinstance(p, torch.Tensor) and p.is_floating_point() for p in params):
        try:
            return cls(target, fused=True, **kwargs)
        except (RuntimeError, ValueError):  # no fused kernel for this device / dtype
            pass
    return cls(target, **kwargs)


def _lr_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]] | None:
    """Parameter groups for ``optim.backbone_lr_mult``: the head first (its lr is the one logged),
    then the backbone at ``lr * backbone_lr_mult``; ``None`` (one group) when the multiplier is 1.

    The model names its groups with ``param_groups()`` (:meth:`hareid.models.core.HarmNet.param_groups`);
    a DDP / compiled wrapper is looked through. Schedules scale every group's lr by the same factor.
    """
    mult = cfg.backbone_lr_mult
    if mult == 1.0:
        return None
    inner = getattr(model, "module", getattr(model, "_orig_mod", model))
    hook = getattr(inner, "param_groups", None)
    if not callable(hook):
        raise ConfigError(f"optim.backbone_lr_mult={mult}: {type(inner).__name__} has no param_groups() "
                          "naming its backbone; leave optim.backbone_lr_mult at 1.0")
    named = hook()
    return [{"params": named["head"], "lr": cfg.lr, "name": "head"},
            {"params": named["backbone"], "lr": cfg.lr * mult, "name": "backbone"}]


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int, iters_per_epoch: int
) -> lrs.LRScheduler:
    """The per-iteration schedule for ``epochs`` epochs of ``iters_per_epoch`` iterations."""
    if iters_per_epoch <= 0:
        raise ConfigError("the training loader is empty: no iterations per epoch")
    ipe, warm = iters_per_epoch, cfg.warmup_epochs
    if cfg.scheduler == "none":
        main: lrs.LRScheduler = lrs.ConstantLR(optimizer, factor=1.0, total_iters=0)
    elif cfg.scheduler == "step":
        # x gamma at every multiple of step_size after the warmup, counted from the schedule's own
        # iteration (not from a milestone list saved in its state), so that a resumed run with more
        # epochs keeps decaying on time
        size, gamma, last = cfg.step_size, cfg.gamma, epochs - 1

        def factor(it: int) -> float:
            return gamma ** (min(warm + it // ipe, last) // size - warm // size)

        main = lrs.LambdaLR(optimizer, factor)
    elif cfg.scheduler == "multistep":
        milestones = list(cfg.milestones)
        early = [m for m in milestones if m <= warm]
        if early:
            raise ConfigError(
                f"optim.milestones {early} fall inside the {warm} warmup epochs; use epochs > warmup_epochs"
            )
        main = lrs.MultiStepLR(optimizer, milestones=[(m - warm) * ipe for m in milestones], gamma=cfg.gamma)
    elif cfg.scheduler == "cosine":
        main = lrs.CosineAnnealingLR(optimizer, T_max=max(1, (epochs - warm) * ipe), eta_min=cfg.min_lr)
    else:
        raise ConfigError(f"optim.scheduler: unknown schedule {cfg.scheduler!r}")
    if warm <= 0:
        return main
    warmup = lrs.LinearLR(optimizer, start_factor=cfg.warmup_factor, end_factor=1.0, total_iters=warm * ipe)
    return lrs.SequentialLR(optimizer, schedulers=[warmup, main], milestones=[warm * ipe])


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the first parameter group (the head's when the backbone has its own)."""
    return float(optimizer.param_groups[0]["lr"])
