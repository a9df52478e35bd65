"""The serving processes' garbage collector: what exists once a server is up is frozen out of collections.

CPython's full (generation-2) collection walks every tracked object while holding the interpreter lock. An
engine holds ~334 000 of them once the model, torch and grpc are loaded; measured on the 2-core VM
(20 long conversations, ``duplex up``), each full collection stopped the engine process for 370–420 ms —
a step, every chunk that arrived meanwhile and the event loop all waited, which put every session's chunk
round trip over 300 ms once every ~25 s (docs/benchmarks.md, "Long sessions: what made them slow").
Objects made at start live as long as the process, so they are moved to the permanent generation
(``gc.freeze``) once the server is up; later full collections only walk what serving created.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect once, then exempt every surviving object from future collections; returns how many."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
