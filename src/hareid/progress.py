"""Progress bars that follow tqdm's convention for non-interactive output.

On a terminal a bar redraws in place; written to a file or pipe (a log, CI) it is switched off
(``disable=None``), so logs are not flooded with carriage-return updates. Set
``HAREID_PROGRESS=1`` to force bars on, ``0`` to force them off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

__all__ = ["progress"]

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, *, enabled: bool = True, **kw: Any) -> tqdm:
    """``tqdm(iterable, **kw)`` on stderr: off when ``enabled`` is false, and on a non-terminal."""
    forced = os.environ.get("HAREID_PROGRESS")
    if not enabled or forced == "0":
        disable: bool | None = True
    else:
        disable = False if forced == "1" else None  # None: tqdm disables itself off a TTY
    kw.setdefault("file", sys.stderr)
    kw.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=disable, **kw)
