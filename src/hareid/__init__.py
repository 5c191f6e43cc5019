"""hareid: harmonious attention for person re-identification.

data -> model (attention -> hacnn) -> engine -> evaluation -> report. See README.md.
"""

from hareid.errors import HareidError

__version__ = "0.1.0"
__all__ = ["HareidError", "__version__"]
