"""hareid: harmonious attention for person re-identification.

data -> models (layers -> networks) -> engine -> evaluate -> analysis; deploy, index, footage,
serve and the ``hareid`` command on top. See README.md and docs/architecture.md.

The names most users need are here, imported on first use (``hareid --help`` stays instant)::

    from hareid import Embedder, Trainer, build_model, load_config, load_model
"""

import importlib
import os
from pathlib import Path
from typing import Any

from hareid import _moved
from hareid.errors import HareidError

__version__ = "0.2.0"
#: Where generated data (the synthetic benchmark) is cached; override with $HAREID_HOME.
CACHE_DIR = Path(os.environ.get("HAREID_HOME", Path.home() / ".cache" / "hareid"))

_LAZY = {
    "Embedder": "hareid.deploy.embedder",
    "Trainer": "hareid.engine.trainer",
    "build_model": "hareid.models.registry",
    "load_config": "hareid.config",
    "load_model": "hareid.models.loading",
}
__all__ = ["CACHE_DIR", "HareidError", "__version__", *sorted(_LAZY)]

_moved.install()  # old import paths (hareid.attention, hareid.embedder, ...) keep working for a release


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    old = f"hareid.{name}"
    if old in _moved.MOVED:  # `from hareid import attention` (a moved module)
        return importlib.import_module(old)
    raise AttributeError(f"module 'hareid' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
