"""Rebuild a model from a checkpoint: :func:`load_model` (a path) and :func:`model_from_checkpoint`
(a checkpoint already read, so a command reads its file once and passes it on).

Reads hareid checkpoints (``ckpt["model"]`` holds the build arguments) and torchreid HACNN
checkpoints (recognised by their keys); never unpickles code (:func:`hareid.checkpoint.load_checkpoint`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hareid.checkpoint import load_checkpoint, strip_prefix
from hareid.errors import CheckpointError
from hareid.models.registry import build_model, model_entry

__all__ = ["load_model", "model_from_checkpoint"]


def load_model(checkpoint: str | os.PathLike, device: str | torch.device | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the network of a checkpoint file and load its weights; returns ``(model.eval(), info)``.

    ``info`` has ``height``, ``width`` (the training input size), ``mean``, ``std``, ``model`` (build
    kwargs), ``config`` (the run's config, ``{}`` if none) and ``path``. Raises
    :class:`~hareid.errors.CheckpointError` for a missing, corrupt or foreign file.
    """
    path = Path(checkpoint)
    return model_from_checkpoint(load_checkpoint(path), path, device)


def model_from_checkpoint(
    ckpt: Mapping[str, Any], path: str | os.PathLike = "<checkpoint>", device: str | torch.device | None = None
) -> tuple[nn.Module, dict]:
    """:func:`load_model` for a checkpoint already read (``load_checkpoint(path)``); ``path`` names it
    in ``info`` and in errors. Each call builds a fresh model: call it again for a second copy."""
    path = Path(path)
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    data_cfg = config.get("data") if isinstance(config.get("data"), dict) else {}
    info: dict[str, Any] = {"config": config, "path": str(path)}
    spec = ckpt.get("model")
    if isinstance(spec, dict) and "name" in spec:
        model = _build_hareid(ckpt, spec, path)
        info["model"] = spec
    else:
        from hareid.models.torchreid_compat import load_torchreid_hacnn

        try:
            model = load_torchreid_hacnn(dict(ckpt))
        except CheckpointError as e:
            raise CheckpointError(f"{path}: neither a hareid checkpoint (no 'model' entry with the settings to "
                                  "rebuild it: save weights with hareid.checkpoint.save_checkpoint({'state_dict': "
                                  "..., 'model': {'name': ..., 'num_classes': ...}}, PATH)) nor a torchreid HACNN "
                                  f"checkpoint ({e})") from e
        info["model"] = {"name": "hacnn", "source": "torchreid"}
    entry = model_entry(info["model"]["name"])
    info.update(height=int(data_cfg.get("height") or entry.input_size[0]),
                width=int(data_cfg.get("width") or entry.input_size[1]), mean=entry.mean, std=entry.std)
    if device is not None:
        model = model.to(device)
    model.hareid_source = str(path)  # exports and int8 saves refuse to write over the file they came from
    return model.eval(), info


def _build_hareid(ckpt: Mapping[str, Any], spec: dict, path: Path) -> nn.Module:
    """The model that ``spec`` (build kwargs with ``name``) describes, holding ``ckpt["state_dict"]``."""
    kwargs = dict(spec)
    kwargs["region_sampling"] = {"peer": "torchreid"}.get(kwargs.get("region_sampling"),
                                                           kwargs.get("region_sampling", "direct"))
    try:
        model = build_model(kwargs.pop("name"), **kwargs)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: cannot rebuild model {spec['name']!r} "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                              "was it saved by another hareid version?") from e
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: no 'state_dict' entry; not a hareid checkpoint")
    _load_exact(model, strip_prefix(state), path, spec["name"])
    return model


def _load_exact(model: nn.Module, state: dict, path: Path, name: str) -> None:
    """``load_state_dict(strict)`` with a one-line error naming the first clashing tensors."""
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in state
              if k in target and tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{label} {items[:3]}" for label, items in (("missing", missing), ("unexpected", unexpected),
                                                             ("shape mismatch", shapes)) if items]
        raise CheckpointError(f"{path}: weights do not fit model {name!r} ({'; '.join(parts)}); "
                              "pass a checkpoint of this model, or start from it with model.init=PATH")
    model.load_state_dict(state)
