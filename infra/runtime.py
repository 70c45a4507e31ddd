"""How our long-running processes (workers, API servers) run: their garbage collection."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time


async def collect_loop(stop: asyncio.Event, young_every_s: float = 5.0, full_every_s: float = 60.0) -> None:
    """Garbage collection on a clock instead of by allocation counts. A worker's batch allocates a few
    objects per event (records, events, plan entries) that live until the batch is applied and are then freed
    by reference counting; CPython's collector, run every 700 allocations, walked them again and again and
    cost a sixth of the worker's time (bench.run: 42,763 -> 51,270 events/s with a higher threshold, 56,172
    with none). So what was loaded at start-up is frozen out of the collections, automatic collection is
    off, the young generations are collected every `young_every_s` and everything every `full_every_s`
    (a reference cycle lives seconds, not forever)."""
    gc.freeze()
    gc.disable()
    last_full = time.monotonic()
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), young_every_s)
            if time.monotonic() - last_full >= full_every_s:
                gc.collect()
                last_full = time.monotonic()
            else:
                gc.collect(1)
    finally:
        gc.enable()
