"""Array type aliases of the detection core: the dtypes its state and batches are made of."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["F32", "F64", "I32", "U8", "U32", "Bool", "Ix"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]
U8 = npt.NDArray[np.uint8]
U32 = npt.NDArray[np.uint32]
Bool = npt.NDArray[np.bool_]
Ix = npt.NDArray[np.intp]
