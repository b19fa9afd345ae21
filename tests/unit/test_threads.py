from threadpoolctl import threadpool_info

from recsim_stream.threads import pin_blas_threads


def test_pinning_blas_threads_limits_every_blas_library_loaded():
    import numpy  # noqa: F401  (loads its BLAS)

    pin_blas_threads(1)
    blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
    assert (len(blas) >= 1, {lib["num_threads"] for lib in blas}) == (True, {1})
