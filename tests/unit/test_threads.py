import os
import threading

from threadpoolctl import threadpool_info

from recsim_stream.threads import ThreadPriority, pin_blas_threads


def test_pinning_blas_threads_limits_every_blas_library_loaded():
    import numpy  # noqa: F401  (loads its BLAS)

    pin_blas_threads(1)
    blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
    assert (len(blas) >= 1, {lib["num_threads"] for lib in blas}) == (True, {1})


def _in_a_thread(priority):
    """(niceness, scheduling policy) of a thread that applied ``priority``."""
    seen = []

    def run():
        priority.apply()
        me = threading.get_native_id()
        seen.append((os.getpriority(os.PRIO_PROCESS, me), os.sched_getscheduler(me)))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return seen[0]


def test_a_thread_lowers_its_own_priority_not_the_process():
    before = (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0))
    assert _in_a_thread(ThreadPriority(niceness=7)) == (7, os.SCHED_OTHER)
    assert _in_a_thread(ThreadPriority(idle=True))[1] == os.SCHED_IDLE
    assert _in_a_thread(ThreadPriority()) == before
    assert (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0)) == before
