"""Unpickling that cannot run pickled code: only an explicit allow-list of globals resolves
(the "Restricting Globals" recipe of Python's `pickle` documentation). Used for the
detectron2 checkpoints (convert/common.py) and RRSIS-D's refs file (input/readers.py), each with
its own allow-list.
"""

from __future__ import annotations

import pickle
from collections.abc import Collection
from typing import IO, Any

# The globals a pickle of numpy scalars needs (numpy 1 and 2 module paths).
NUMPY_SCALARS = frozenset({("numpy.core.multiarray", "scalar"),
                           ("numpy._core.multiarray", "scalar"), ("numpy", "dtype")})
# ... and of numpy arrays.
NUMPY_ARRAYS = NUMPY_SCALARS | {("numpy.core.multiarray", "_reconstruct"),
                                ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray")}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], allowed: Collection[tuple[str, str]], what: str,
                 encoding: str):
        super().__init__(file, encoding=encoding)
        self.allowed, self.what = frozenset(allowed), what

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only {self.what} are "
                                     "allowed")


def restricted_load(file: IO[bytes], allowed: Collection[tuple[str, str]], what: str,
                    encoding: str = "ASCII") -> Any:
    """`pickle.load(file)` resolving only the (module, name) globals in `allowed`; any other
    global raises `pickle.UnpicklingError("refusing to load <module>.<name>: only <what> are
    allowed")` before it is called. `encoding`: how Python 2 strings are decoded."""
    return _RestrictedUnpickler(file, allowed, what, encoding).load()
