"""Thread counts of the numeric libraries in a learning process.

numpy's OpenBLAS starts one thread per core for every product big enough; on a two-core machine that
also runs the broker, Ray shards and the API, those threads spin and wait for a core. The cold start's
temperature calibration in a MovieLens eval (load ~4, timed by a scratch wrapper): 0.40 s with
OpenBLAS's default threads, 0.10 s with one.
"""

from __future__ import annotations

from threadpoolctl import threadpool_limits


def pin_blas_threads(threads: int) -> None:
    """Limit numpy's BLAS to ``threads`` for the rest of the process (threadpoolctl finds the
    library actually loaded, which an environment variable set after numpy's import cannot reach)."""
    threadpool_limits(threads, user_api="blas")
