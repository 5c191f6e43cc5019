"""Load torchreid's HACNN module by file path (importing the torchreid package needs OpenCV).

``peer_hacnn()`` returns the module, or skips the calling test when torchreid is not installed.
"""

from __future__ import annotations

import importlib.util
import sysconfig
import warnings
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import pytest

_REL = Path("torchreid") / "reid" / "models" / "hacnn.py"


@lru_cache(maxsize=1)
def _load() -> ModuleType | None:
    spec = importlib.util.find_spec("torchreid")  # finds the package without importing it
    roots = list(spec.submodule_search_locations or []) if spec else []
    candidates = [Path(r).parent / _REL for r in roots] + [Path(sysconfig.get_paths()["purelib"]) / _REL]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        return None
    mod_spec = importlib.util.spec_from_file_location("_hareid_peer_hacnn", path)
    module = importlib.util.module_from_spec(mod_spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod_spec.loader.exec_module(module)
    return module


def peer_hacnn() -> ModuleType:
    """torchreid's ``hacnn`` module (has ``HACNN``); skips the test if torchreid is missing."""
    module = _load()
    if module is None:
        pytest.skip("torchreid is not installed (pip install -e '.[bench]')")
    return module
