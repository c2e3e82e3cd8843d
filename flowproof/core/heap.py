"""The garbage collector of a long-running flowproof process (relay, consumer, verifier).

CPython's cycle collector runs its youngest generation after every 700 net allocations of
container objects, and the oldest whenever it has grown by a quarter. A relay batch keeps a few
thousand objects alive at once (rows, messages, their tuples), so with the defaults each batch
triggers young collections that walk it, move it to the older generations, and every few batches
a full collection walks the whole heap: the modules, the compiled schemas, the clients, some
80,000 objects after start-up, 40 to 77 ms each (measured in the relay with `gc.callbacks`).

`settle()`, called once when a long-running command starts, moves everything alive then into
the permanent generation (`gc.freeze()`: the imports never get walked again) and raises the
youngest generation's threshold above what a batch keeps alive, so a batch's objects are freed
by reference counting before the collector ever looks at them. Reference cycles are still
collected, later. Nothing here changes what the process does, only when it pauses; see
docs/benchmarks.md for what it measured.
"""

from __future__ import annotations

import gc

# Net container allocations between two young collections: above a full batch of the relay or a
# consumer (500 rows of about 20 objects each), small next to the memory targets.
YOUNG_THRESHOLD = 50_000


def settle() -> None:
    """Collect once, freeze what is alive, and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
