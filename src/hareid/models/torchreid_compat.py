"""Load torchreid (0.2.x) HACNN checkpoints into hareid's :class:`~hareid.models.hacnn.HACNN`.

torchreid saves ``{"state_dict", "epoch", "optimizer", "rank1" (a numpy scalar), ...}``, keys possibly
prefixed ``module.``. :func:`hareid.checkpoint.load_checkpoint` reads such files without full
unpickling; this module renames the keys with a fixed, total map (every source key must map onto a
hareid key and every hareid key must be filled; otherwise :class:`~hareid.errors.CheckpointError`
names the offenders) and builds the model with ``region_sampling="torchreid"``, the mode whose embeddings
equal torchreid's (to ~1e-6 at 160x64). hareid never imports torchreid.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch

from hareid.checkpoint import load_checkpoint, strip_prefix
from hareid.errors import CheckpointError
from hareid.models.hacnn import HACNN

__all__ = ["KEY_MAP", "load_torchreid_hacnn", "map_torchreid_keys"]

# (torchreid pattern, hareid replacement), applied to the full key; exactly one must match.
KEY_MAP: list[tuple[str, str]] = [
    (r"^conv\.(conv|bn)\.", r"stem.\1."),
    (r"^inception(\d)\.(\d)\.stream(\d)\.", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.streams.{int(m[3]) - 1}."),
    (r"^ha(\d)\.soft_attn\.spatial_attn\.", lambda m: f"attn.{int(m[1]) - 1}.soft.spatial."),
    (r"^ha(\d)\.soft_attn\.channel_attn\.", lambda m: f"attn.{int(m[1]) - 1}.soft.channel."),
    (r"^ha(\d)\.soft_attn\.conv\.", lambda m: f"attn.{int(m[1]) - 1}.soft.conv."),
    (r"^ha(\d)\.hard_attn\.fc\.", lambda m: f"attn.{int(m[1]) - 1}.hard.fc."),
    (r"^local_conv(\d)\.stream(\d)\.", lambda m: f"local.{int(m[1]) - 1}.streams.{int(m[2]) - 1}."),
    (r"^(fc_global|classifier_global|fc_local|classifier_local)\.", r"\1."),
]
_COMPILED = [(re.compile(p), r) for p, r in KEY_MAP]


def map_torchreid_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchreid HACNN keys to hareid keys; unknown keys raise :class:`CheckpointError`."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in strip_prefix(state_dict).items():
        for pattern, repl in _COMPILED:
            new, n = pattern.subn(repl, key, count=1)
            if n:
                out[new] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"not a torchreid HACNN checkpoint: unexpected keys {unknown[:8]}"
                              + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else ""))
    return out


def _state_dict_of(obj: str | os.PathLike | Mapping) -> dict[str, torch.Tensor]:
    if isinstance(obj, (str, os.PathLike)):
        obj = load_checkpoint(obj)
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError("expected a torchreid checkpoint dict with a 'state_dict' of tensors")
    return strip_prefix(dict(obj))


def load_torchreid_hacnn(path_or_state_dict: str | os.PathLike | Mapping, num_classes: int | None = None) -> HACNN:
    """Build a hareid HACNN (``region_sampling="torchreid"``, eval mode) holding torchreid's weights.

    Args:
        path_or_state_dict: a checkpoint file, a loaded checkpoint dict, or a bare state_dict.
        num_classes: ``None`` keeps the checkpoint's classifiers; another number replaces both
            classifiers by fresh ones of that size (fine-tuning on a new dataset), all other weights load.

    Raises:
        CheckpointError: unreadable file, keys missing or unexpected (named), or shapes that differ.
    """
    sd = map_torchreid_keys(_state_dict_of(path_or_state_dict))
    try:
        ckpt_classes = sd["classifier_global.weight"].shape[0]
        feature_dim = sd["fc_global.0.weight"].shape[0]
        channels = tuple(sd[f"attn.{s}.soft.conv.conv.weight"].shape[0] for s in range(3))
    except KeyError as e:
        raise CheckpointError(f"torchreid HACNN checkpoint lacks {e.args[0]!r} (after key mapping)") from e
    local_branch = any(k.startswith("local.") for k in sd)
    num_regions = sd["attn.0.hard.fc.bias"].numel() // 2 if "attn.0.hard.fc.bias" in sd else 4
    model = HACNN(
        num_classes or ckpt_classes, channels=channels, num_regions=num_regions, feature_dim=feature_dim,
        local_branch=local_branch, region_sampling="torchreid",
    )
    target = model.state_dict()
    if num_classes is not None and num_classes != ckpt_classes:
        sd = {k: v for k, v in sd.items() if not k.startswith("classifier_")}
        target = {k: v for k, v in target.items() if not k.startswith("classifier_")}
    missing = sorted(set(target) - set(sd))
    unexpected = sorted(set(sd) - set(target))
    bad_shape = sorted(k for k in set(sd) & set(target) if sd[k].shape != target[k].shape)
    if missing or unexpected or bad_shape:
        raise CheckpointError(
            f"torchreid HACNN checkpoint does not fit hareid's HACNN: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}, shape mismatch {bad_shape[:8]}"
        )
    model.load_state_dict(sd, strict=not (num_classes is not None and num_classes != ckpt_classes))
    return model.eval()
