"""Types of the Cython kernel (``_hamming.pyx``)."""

import numpy as np

def min_distances(
    query: np.ndarray,
    reference: np.ndarray,
    offsets: np.ndarray,
    out: np.ndarray,
    start: int,
    stop: int,
    skip: np.ndarray | None = None,
    floor: int = 0,
) -> None: ...
