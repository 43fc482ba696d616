"""Process-wide settings for a process that holds thousands of connections.

Called by entry points only (`fleetrig serve`, the fleet runner, the benchmarks), never at
import or in a constructor: a library must not change the garbage collector or asyncio of the
program that imports it.

* The TLS read buffer: see harness.broker.asyncio_compat.
* The cyclic garbage collector runs its young generation every 5,000 allocations instead of
  700, and considers a full collection after 100 middle-generation ones instead of 10. With
  thousands of live sessions (or agents), amqtt's per-packet tasks and each connect's few
  thousand objects otherwise trigger full collections over every session, each pausing the
  process for a quarter second at 5,000 sessions: a fifth of the broker's CPU during a connect
  storm, and 150 ms passes over 5,000 agents in a fleet process.
"""

from __future__ import annotations

import gc

from harness.broker.asyncio_compat import shrink_tls_read_buffer

#: Young-generation threshold of the cyclic garbage collector (default 700).
GC_YOUNG_THRESHOLD = 5_000
#: Middle-generation collections between full ones (default 10).
GC_OLD_THRESHOLD = 100


def tune_process() -> None:
    """Apply the settings above; only ever lowers the cost, so calling it twice is harmless."""
    shrink_tls_read_buffer()
    young, middle, old = gc.get_threshold()
    if 0 < young < GC_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD, middle, max(old, GC_OLD_THRESHOLD))
