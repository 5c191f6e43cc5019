"""Model registry: ``@register_model`` to add a builder, ``build_model(name, num_classes, **options)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

from torch import nn

__all__ = ["build_model", "list_models", "register_model"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(name: str | Callable[..., nn.Module] | None = None) -> Callable:
    """Register a model builder ``fn(num_classes, **options) -> nn.Module`` under ``name``.

    Options are validated against ``fn.options`` when the builder sets it (builders that forward
    ``**options`` to a class), else against the builder's own signature.

    Use as ``@register_model`` (the function's name) or ``@register_model("name")``.
    """

    def wrap(fn: F, key: str | None = None) -> F:
        key = key or fn.__name__
        if key in _MODELS and _MODELS[key] is not fn:
            raise ValueError(f"model {key!r} is already registered")
        _MODELS[key] = fn
        return fn

    if callable(name):
        return wrap(name)
    return lambda fn: wrap(fn, name)


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`, sorted."""
    return sorted(_MODELS)


def build_model(name: str, num_classes: int, **options: object) -> nn.Module:
    """Build model ``name`` with a classifier of ``num_classes`` outputs.

    Raises ``ValueError`` naming the valid choices for an unknown model name or option.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    fn = _MODELS[name]
    params = inspect.signature(fn).parameters
    # a builder that forwards ``**options`` names them in ``fn.options``; else its signature does
    valid = getattr(fn, "options", None) or [p for p in params if p != "num_classes"]
    if hasattr(fn, "options") or not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(f"model {name!r}: unknown option(s) {unknown}; valid options: {', '.join(valid)}")
    return fn(num_classes=num_classes, **options)
