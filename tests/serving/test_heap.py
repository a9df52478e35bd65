"""The serving processes freeze what exists once a server is up (``serving/heap.py``)."""

from __future__ import annotations

import gc
import weakref

from duplex.serving.heap import freeze_startup_heap


class Node:
    me: object = None


def test_garbage_is_collected_and_the_rest_is_frozen_out_of_full_collections() -> None:
    cycle = Node()
    cycle.me = cycle
    gone = weakref.ref(cycle)
    del cycle
    live = Node()
    live.me = live
    try:
        frozen = freeze_startup_heap()
        assert gone() is None, "garbage is collected first, never frozen for the process's life"
        assert frozen > 0  # (other threads' objects may be freed meanwhile: the count only shrinks after)
        assert not any(o is live for o in gc.get_objects()), "a frozen object is no longer walked"
    finally:
        gc.unfreeze()
    assert any(o is live for o in gc.get_objects())
