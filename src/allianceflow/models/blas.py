"""One BLAS thread for the models' small linear algebra: :func:`one_blas_thread`.

The engines work on many small matrices (one block per unit, a Schur complement of tens
to hundreds of rows) and scipy's L-BFGS-B calls BLAS on vectors of a few entries; a
multi-threaded OpenBLAS spends more time waking and synchronising its threads than
computing (on a loaded two-core machine, 3-4 times the CPU time of a small fit, and 14
CPU-s instead of 0.43 for a 2,000-patient crossed fit). threadpoolctl limits the threads
for the duration of a block and restores them on exit.

Finding the BLAS libraries (threadpoolctl's scan of every loaded shared library) costs
about 40 ms, as much as fitting a small model; it is done once per process, on first use
(the engine, the sparse engine and the Satterthwaite / Kenward–Roger moments each made
their own before, and a pipeline job paid it twice).
"""

from __future__ import annotations

from typing import Any

__all__ = ["one_blas_thread"]

_CONTROLLER: Any = None


def one_blas_thread(limit: int = 1) -> Any:
    """Limit BLAS to *limit* threads within a ``with`` block (a context manager).

    >>> import numpy as np
    >>> with one_blas_thread():
    ...     float(np.ones((3, 3)) @ np.ones(3) @ np.ones(3))
    9.0
    """
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=limit, user_api="blas")
