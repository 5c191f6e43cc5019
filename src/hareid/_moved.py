"""Import paths of modules that moved, kept working for one release.

``import hareid.attention`` (say) gives the very module object at its new path
(``hareid.models.layers.attention``), with a :class:`DeprecationWarning` naming that path, so
old code, pickled references and ``mock.patch("hareid.attention.X")`` keep working. No file
stands at the old path: a finder at the end of ``sys.meta_path`` answers only for the names below.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

#: old dotted path -> where the module lives now
MOVED: dict[str, str] = {
    "hareid.attention": "hareid.models.layers.attention",
    "hareid.blocks": "hareid.models.layers.blocks",
    "hareid.torchreid_compat": "hareid.models.torchreid_compat",
    "hareid.inference": "hareid.models.inference",
    "hareid.quantize": "hareid.deploy.quantize",
    "hareid.export": "hareid.deploy.export",
    "hareid.embedder": "hareid.deploy.embedder",
    "hareid.visualize": "hareid.analysis.visualize",
    "hareid.attention_score": "hareid.analysis.attention_score",
    "hareid.ablation": "hareid.analysis.ablation",
    "hareid.report": "hareid.analysis.report",
    "hareid.losses": "hareid.engine.losses",
    "hareid.optim": "hareid.engine.optim",
    "hareid.engine.adapt": "hareid.footage.adapt",
    "hareid.engine.runtime": "hareid.runtime",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def find_spec(self, fullname: str, path: object = None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there (the old path goes in the next release)",
                      DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # already executed at its new path; the import system set ``__spec__`` to the alias's
        # spec (named by the old path): give the module back its own
        module.__spec__ = self._specs[module.__spec__.name]


def install() -> None:
    """Add the finder once (idempotent)."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
