"""Model registry: every entry carries its builder and its defaults (in the spirit of timm's default cfg).

``@register_model(input_size=(160, 64))`` on a class or builder function adds it;
``build_model(name, num_classes, **options)`` builds it; ``model_entry(name)`` tells what a tool needs
to know without building anything: the input size the model was designed for, the normalisation
mean/std, and the options it accepts with their defaults and types.

The options are read from the builder's own signature: its keyword parameters with defaults and, when
it forwards ``**options`` (a class whose ``__init__`` passes them to its base class, or a
``functools.partial`` of one), the keyword parameters with defaults of each ``__init__`` along the
class's MRO until one no longer forwards. Keywords bound by a ``partial`` are fixed, not options.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from hareid.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ModelEntry",
    "build_model",
    "list_models",
    "model_entry",
    "register_model",
]

@dataclass(frozen=True)
class ModelEntry:
    """A registered model: ``builder(num_classes=..., **options)`` and its defaults.

    ``options`` maps each accepted option to its default; ``types`` to its annotation (resolved).
    """

    name: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, int] = (160, 64)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    options: Mapping[str, Any] = field(default_factory=dict)
    types: Mapping[str, Any] = field(default_factory=dict)
    doc: str = ""

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` naming the valid options for an unknown one."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            import difflib

            hints = [difflib.get_close_matches(u, list(self.options), n=1) for u in unknown]
            near = "; did you mean " + ", ".join(repr(h[0]) for h in hints if h) + "?" if any(hints) else ""
            raise ValueError(f"model {self.name!r}: unknown option(s) {unknown}{near} "
                             f"valid options: {', '.join(self.options)}")


_MODELS: dict[str, ModelEntry] = {}


def _init_chain(fn: Callable) -> tuple[list[tuple[Callable, type | None]], set[str]]:
    """The callables whose keyword parameters are options, and the keywords fixed by partials."""
    fixed: set[str] = set()
    while isinstance(fn, functools.partial):
        fixed |= set(fn.keywords)
        fn = fn.func
    if not inspect.isclass(fn):
        return [(fn, None)], fixed
    return [(cls.__init__, cls) for cls in fn.__mro__ if "__init__" in cls.__dict__ and cls is not nn.Module
            and cls is not object], fixed


def _collect_options(fn: Callable) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(defaults, types)`` of the options ``fn`` accepts (see the module docstring)."""
    chain, fixed = _init_chain(fn)
    defaults: dict[str, Any] = {}
    types: dict[str, Any] = {}
    for func, owner in chain:
        params = inspect.signature(func).parameters
        try:
            hints = typing.get_type_hints(func, globalns=vars(inspect.getmodule(owner or func)))
        except Exception:  # pragma: no cover - an annotation that cannot be resolved
            hints = {}
        for name, p in params.items():
            if name in ("self", "num_classes") or name in fixed or name in defaults:
                continue
            if p.default is not p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                defaults[name] = p.default
                types[name] = hints.get(name, type(p.default))
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return defaults, types


def register_model(
    name: str | Callable[..., nn.Module] | None = None,
    *,
    input_size: tuple[int, int] = (160, 64),
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> Callable:
    """Register a model class or builder ``fn(num_classes, **options) -> nn.Module``.

    Use as ``@register_model``, ``@register_model("name", input_size=(256, 128))`` or call it on a
    ``functools.partial``. The name defaults to the function's name (a class: its name in lower case).
    """

    def wrap(fn: Callable, key: str | None = None) -> Callable:
        base = fn.func if isinstance(fn, functools.partial) else fn
        key = key or getattr(base, "__name__", "").lower()
        if not key:
            raise ValueError("register_model: give a name for a builder without __name__")
        if key in _MODELS and _MODELS[key].builder is not fn:
            raise ValueError(f"model {key!r} is already registered")
        defaults, types = _collect_options(fn)
        doc = (inspect.getdoc(base) or "").split("\n\n")[0].replace("\n", " ")
        _MODELS[key] = ModelEntry(key, fn, tuple(input_size), tuple(mean), tuple(std), defaults, types, doc)
        return fn

    if callable(name):
        return wrap(name)
    return lambda fn: wrap(fn, name)


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`, sorted."""
    return sorted(_MODELS)


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; ``ValueError`` naming the available models otherwise."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    return _MODELS[name]


def build_model(name: str, num_classes: int, **options: Any) -> nn.Module:
    """Build model ``name`` with a classifier of ``num_classes`` outputs.

    Raises ``ValueError`` naming the valid choices for an unknown model name or option.
    """
    entry = model_entry(name)
    entry.check_options(options)
    return entry.builder(num_classes=num_classes, **options)
