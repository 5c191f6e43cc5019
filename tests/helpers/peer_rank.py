"""Load torchreid's evaluation (the peer) by file path, without importing the torchreid package.

``import torchreid`` fails here (it needs cv2), so ``rank.py`` is loaded on its own. Its Cython
variant is not shipped in the wheel; :func:`load_peer_cython` builds ``rank_cy.pyx`` from
``$HAREID_PEER_RANK_CY`` (a path to the .pyx from a torchreid source checkout) into a temporary
folder when Cython and a C compiler are available. Both return ``None`` when unavailable.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from types import ModuleType

_CACHE: dict[str, ModuleType | None] = {}


def _torchreid_dir() -> Path | None:
    spec = importlib.util.find_spec("torchreid")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def load_peer_rank() -> ModuleType | None:
    """torchreid/reid/metrics/rank.py as a standalone module (python evaluation only)."""
    if "rank" not in _CACHE:
        root = _torchreid_dir()
        path = root / "reid" / "metrics" / "rank.py" if root else None
        if path is None or not path.is_file():
            _CACHE["rank"] = None
        else:
            spec = importlib.util.spec_from_file_location("_peer_rank_py", path)
            mod = importlib.util.module_from_spec(spec)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Cython evaluation ... unavailable"
                spec.loader.exec_module(mod)
            _CACHE["rank"] = mod
    return _CACHE["rank"]


def _pyx_source() -> Path | None:
    candidates = [os.environ.get("HAREID_PEER_RANK_CY", "")]
    root = _torchreid_dir()
    if root:
        candidates.append(str(root / "reid" / "metrics" / "rank_cylib" / "rank_cy.pyx"))
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    return None


def load_peer_cython() -> ModuleType | None:
    """The peer's Cython ``rank_cy`` module, compiled into a temp dir; None if not buildable."""
    if "cy" in _CACHE:
        return _CACHE["cy"]
    _CACHE["cy"] = None
    src = _pyx_source()
    if src is None or shutil.which("cc") is None:
        return None
    try:
        import numpy as np
        from Cython.Build import cythonize  # noqa: F401
    except ImportError:
        return None
    build = Path(tempfile.mkdtemp(prefix="peer_rank_cy_"))
    shutil.copy(src, build / "rank_cy.pyx")
    env = dict(os.environ, CFLAGS=f"-I{np.get_include()} -O3")
    proc = subprocess.run(
        [sys.executable, "-m", "Cython.Build.Cythonize", "-i", "-3", "-q", "rank_cy.pyx"],
        cwd=build, env=env, capture_output=True, text=True,
    )
    built = list(build.glob("rank_cy*.so")) + list(build.glob("rank_cy*.pyd"))
    if proc.returncode != 0 or not built:
        return None
    spec = importlib.util.spec_from_file_location("rank_cy", built[0])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    _CACHE["cy"] = mod
    return mod
