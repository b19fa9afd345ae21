"""The garbage collector's settings for the long-running services.

CPython's cyclic collector runs a generation-0 pass every 700 net allocations of container objects
and, every hundred of those, a full pass over every object alive. A service holding millions of them
(open sessions, item names, a reservoir of pairs, and the hundreds of thousands that importing torch
and Ray leaves behind) spent 150 ms in each full pass and 1.5 s of a 7 s Kafka backlog in them
(BENCHMARKS.md, tenth session). Its objects are long-lived and rarely form cycles, so once start-up is
done they are moved out of the collector's sight and collections run a hundred times less often.
"""

from __future__ import annotations

import atexit
import gc


def settle_heap(gen0_threshold: int) -> None:
    """Freeze what start-up allocated (imports, assembled parts) and collect every ``gen0_threshold``
    net allocations instead of 700; 0 leaves Python's default threshold (the freeze still applies).

    Call once the process is assembled; calling again freezes what survived since. At exit the
    objects are unfrozen, so that the interpreter's last collection still frees them (extension
    modules such as triton's report the objects it could not free as leaks).
    """
    gc.collect()
    gc.freeze()
    atexit.register(gc.unfreeze)
    if gen0_threshold:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)
