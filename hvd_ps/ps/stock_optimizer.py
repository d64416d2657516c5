"""The optimizer a stock MXNet worker sends with ``kv.set_optimizer``, unpickled safely.

A stock worker (``mx.kv.create('dist_sync'|'dist_async')``, or a Gluon ``Trainer`` with its
default ``update_on_kvstore``) sends its optimizer to every server as a pickle (protocol 0)
in controller command 0. MXNet's own server ``pickle.loads`` it, which runs whatever code the
pickle names. :func:`load_optimizer` instead uses an unpickler whose ``find_class`` resolves
only the names in :data:`ALLOWED` (MXNet's built-in optimizers and learning-rate schedulers,
the ``copyreg``/``object``/``_codecs`` pieces protocol 0 uses to rebuild a plain object
and bytes, each narrowed to that use, and numpy's scalar and dtype for numbers held as
numpy scalars), so no other global is ever looked up,
let alone called. The result must then be an instance of exactly one of the built-in
optimizer classes (no subclass) holding only plain data: numbers, strings, ``None`` and
lists, tuples and dicts of them, and built-in schedulers holding the same. Anything else
raises :class:`RefusedOptimizer` naming what was refused.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, Callable, Dict, Tuple

from ..errors import HvdPsError

#: MXNet 1.9.1's registered optimizers, by module and name. ``Test`` (w += rescale_grad * g,
#: its state a copy of w) is what MXNet's nightly ``dist_sync_kvstore.py`` sends.
OPTIMIZER_CLASSES: Tuple[Tuple[str, str], ...] = tuple(
    ("mxnet.optimizer.optimizer", name)
    for name in (
        "SGD",
        "Signum",
        "FTML",
        "LARS",
        "LBSGD",
        "LAMB",
        "DCASGD",
        "NAG",
        "SGLD",
        "ccSGD",
        "Adam",
        "AdaGrad",
        "RMSProp",
        "AdaDelta",
        "Ftrl",
        "Adamax",
        "Nadam",
        "Test",
    )
) + (("mxnet.optimizer.contrib", "GroupAdaGrad"),)

#: MXNet's learning-rate schedulers an optimizer may hold.
SCHEDULER_CLASSES: Tuple[Tuple[str, str], ...] = tuple(
    ("mxnet.lr_scheduler", name)
    for name in (
        "LRScheduler",
        "FactorScheduler",
        "MultiFactorScheduler",
        "PolyScheduler",
        "CosineScheduler",
    )
)

#: Plain-data helpers a pickle of such an object may name (Python 2 spellings included:
#: protocol 0 writes ``copy_reg`` and ``__builtin__``).
HELPERS: Tuple[Tuple[str, str], ...] = (
    ("copyreg", "_reconstructor"),
    ("copy_reg", "_reconstructor"),
    ("builtins", "object"),
    ("__builtin__", "object"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
)

#: Every name the unpickler resolves; anything else is refused before it is looked up.
ALLOWED = frozenset(OPTIMIZER_CLASSES + SCHEDULER_CLASSES + HELPERS)

#: Numpy scalar kinds a number may be held as (bool, int, uint, float).
_NUMERIC_KINDS = "biuf"


class RefusedOptimizer(HvdPsError, ValueError):
    """A ``kv.set_optimizer`` payload that is not a built-in MXNet optimizer of plain data."""


def _classes(names: Tuple[Tuple[str, str], ...]) -> Dict[Tuple[str, str], type]:
    import importlib

    return {(mod, name): getattr(importlib.import_module(mod), name) for mod, name in names}


def _latin1_bytes(text: Any, encoding: Any = None) -> bytes:
    """``_codecs.encode`` restricted to what protocol 0 emits for bytes (numpy scalars)."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("_codecs.encode used for more than latin-1 bytes")
    return text.encode("latin1")


def _plain_object(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` restricted to what protocol 0 emits for a plain object."""
    if base is not object or state is not None or not isinstance(cls, type):
        raise pickle.UnpicklingError("copyreg._reconstructor used for more than a plain object")
    return object.__new__(cls)


class _Unpickler(pickle.Unpickler):
    """Resolves only :data:`ALLOWED` names (Python's "Restricting Globals" recipe)."""

    def __init__(self, data: bytes, objects: Dict[Tuple[str, str], Any]) -> None:
        super().__init__(io.BytesIO(data))
        self.objects = objects

    def find_class(self, module: str, name: str) -> Any:
        obj = self.objects.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return obj


def _check_plain(value: Any, schedulers: Tuple[type, ...], where: str, depth: int = 0) -> None:
    """Raise unless ``value`` is plain data (or a built-in scheduler holding plain data)."""
    import numpy as np

    if depth > 20:
        raise RefusedOptimizer(f"{where} is nested too deeply")
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, np.generic):
        if value.dtype.kind not in _NUMERIC_KINDS:
            raise RefusedOptimizer(f"{where} is a numpy {value.dtype} scalar, not a number")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, schedulers, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not (k is None or isinstance(k, (bool, int, float, str))):
                raise RefusedOptimizer(f"{where} has a key of type {type(k).__name__}")
            _check_plain(item, schedulers, f"{where}[{k!r}]", depth + 1)
        return
    if type(value) in schedulers:
        _check_attributes(value, schedulers, where, depth + 1)
        return
    raise RefusedOptimizer(f"{where} holds a {type(value).__module__}.{type(value).__name__}")


def _check_attributes(obj: Any, schedulers: Tuple[type, ...], where: str, depth: int) -> None:
    for key, value in vars(obj).items():
        if not isinstance(key, str):
            raise RefusedOptimizer(f"{where} has a non-string attribute name")
        if callable(getattr(type(obj), key, None)):
            raise RefusedOptimizer(f"{where}.{key} would shadow a method of {type(obj).__name__}")
        _check_plain(value, schedulers, f"{where}.{key}", depth)


def load_optimizer(body: bytes) -> Any:
    """The MXNet optimizer pickled in ``body``, or :class:`RefusedOptimizer` saying why not."""
    optimizers = _classes(OPTIMIZER_CLASSES)
    schedulers = _classes(SCHEDULER_CLASSES)
    import numpy as np

    helpers: Dict[Tuple[str, str], Callable[..., Any]] = {
        ("copyreg", "_reconstructor"): _plain_object,
        ("copy_reg", "_reconstructor"): _plain_object,
        ("builtins", "object"): object,
        ("__builtin__", "object"): object,
        ("numpy.core.multiarray", "scalar"): np.core.multiarray.scalar,  # type: ignore
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_bytes,
    }
    try:
        opt = _Unpickler(body, {**optimizers, **schedulers, **helpers}).load()
    except RefusedOptimizer:
        raise
    except Exception as err:  # any malformed or disallowed pickle
        raise RefusedOptimizer(f"not a built-in MXNet optimizer: {err}") from None
    if type(opt) not in optimizers.values():
        raise RefusedOptimizer(
            f"unpickled a {type(opt).__module__}.{type(opt).__name__}, not one of MXNet's "
            "built-in optimizers"
        )
    _check_attributes(opt, tuple(schedulers.values()), type(opt).__name__, 0)
    opt.param_dict = {}  # as MXNet's Optimizer.__setstate__ leaves it; never sent
    return opt


def describe(opt: Any) -> str:
    """One line naming the optimizer and its main settings (for the server log)."""
    keys = ("lr", "wd", "rescale_grad", "momentum", "multi_precision", "lazy_update")
    shown = ", ".join(f"{k}={getattr(opt, k)!r}" for k in keys if hasattr(opt, k))
    return f"{type(opt).__name__}({shown})"
