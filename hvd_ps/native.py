"""hvd_ps's C++ library (``cpp/``, built by ``setup.py`` as ``hvd_ps/_fusion*.so``): where it is,
and loading it. The library links against MXNet's: ``import mxnet`` first.

Its users: the fused-buffer op of the training ranks (:mod:`hvd_ps.train.core.fusion`) and the
compressed wire's codec on the servers (:mod:`hvd_ps.ps.wire_host`). No silent Python fallback:
a missing library is an ImportError that says how to build it.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os

BUILD_HINT = (
    "hvd_ps: the fused-buffer op hvd_ps/_fusion*.so is not built. Build it in this environment "
    "with `pip install --no-build-isolation -e .` (mxnet==1.9.1 installed first) or run "
    "`bash scripts/test.sh`, which bootstraps everything."
)


def library_path() -> str:
    """The built library's path; ImportError with :data:`BUILD_HINT` if there is none."""
    here = os.path.dirname(os.path.abspath(__file__))  # setup.py builds hvd_ps._fusion here
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(here, "_fusion" + suffix)
        if os.path.isfile(path):
            return path
    raise ImportError(BUILD_HINT)


def load() -> ctypes.CDLL:
    """The library, loaded (``import mxnet`` must have loaded libmxnet.so, which it uses)."""
    path = library_path()
    try:
        return ctypes.CDLL(path)
    except OSError as err:
        raise ImportError(f"{BUILD_HINT} (loading {path} failed: {err})") from err
