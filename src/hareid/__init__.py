"""hareid: harmonious attention for person re-identification.

data -> model (attention -> hacnn) -> engine -> evaluation -> report. See README.md.
"""

import os
from pathlib import Path

from hareid.errors import HareidError

__version__ = "0.1.0"
#: Where generated data (the synthetic benchmark) is cached; override with $HAREID_HOME.
CACHE_DIR = Path(os.environ.get("HAREID_HOME", Path.home() / ".cache" / "hareid"))

__all__ = ["CACHE_DIR", "HareidError", "__version__"]
