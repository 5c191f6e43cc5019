"""hareid: harmonious attention for person re-identification.

data -> model (attention -> hacnn) -> engine -> evaluation -> report. See README.md.
``from hareid import Embedder`` gives the embedding contract trackers and services use.
"""

import os
from pathlib import Path
from typing import Any

from hareid.errors import HareidError

__version__ = "0.2.0"
#: Where generated data (the synthetic benchmark) is cached; override with $HAREID_HOME.
CACHE_DIR = Path(os.environ.get("HAREID_HOME", Path.home() / ".cache" / "hareid"))

__all__ = ["CACHE_DIR", "Embedder", "HareidError", "__version__"]


def __getattr__(name: str) -> Any:  # heavy imports (torch) only when asked for: `hareid --help` stays instant
    if name == "Embedder":
        from hareid.embedder import Embedder

        return Embedder
    raise AttributeError(f"module 'hareid' has no attribute {name!r}")
