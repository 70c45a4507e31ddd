"""Faust's aiokafka transport with a consumer that hands a fetched batch over in one step.

Stock Faust (faust-streaming 0.15, `faust/transport/consumer.py`, `Consumer._drain_messages`) delivers
every fetched message with `await self.wait_first(callback(message), self.suspend_flow.wait())`.
`mode`'s `wait_first` wraps each argument and the service's stop/crash events in new tasks, waits for the
first with `asyncio.wait` and cancels the rest: several tasks and loop iterations per message, ~150-200 µs,
which caps an agent at 4,500-7,000 events/s on this project's 2-core machine whatever the batch settings.

The race exists only so that a delivery blocked on flow control (a rebalance suspends the flow) can be
abandoned. `Consumer._drain_messages` below races the *whole batch* against `suspend_flow` once; inside,
each message is delivered with a plain `await callback(message)`, which does not suspend in the common case
(flow active, producer buffer low, queue not full). It keeps every per-message check of the stock code: the
`flow_active` flag (re-read before each message), the generation id (a batch fetched before a rebalance is
abandoned), the active-partition filter, the read offset (older duplicates dropped), gap tracking for acks,
`commit_every`, and a `sleep(0)` every 100 messages so agents and timers run. Acks and commits are untouched:
messages still go through the conductor and the streams.

Registered as the `fastkafka://` broker scheme (`register()`, called by streams/app.py); `kafka://` gives the
stock consumer. docs/faust.md describes the change as a patch for upstream, with the measured gain.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, ClassVar

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as aiokafka_driver

SCHEME = "fastkafka"


class Consumer(aiokafka_driver.Consumer):
    """The stock aiokafka Faust consumer, draining each fetched batch under one flow-control race."""

    yield_every: ClassVar[int] = 100

    async def _drain_messages(self, fetcher: Any) -> None:
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                self.diag.set_flag(CONSUMER_FETCHING)
                await self.sleep(0)  # as stock: a busy fetch loop must still release the event loop
                if self.should_stop:
                    continue
                records, active_partitions = await self._wait_next_records(1.0)
                if records is None or self.should_stop:
                    self.diag.unset_flag(CONSUMER_FETCHING)
                    continue
                if not self.flow_active:
                    # A fetch that returned while the flow was stopped may have moved positions: go back
                    # to the committed offsets (stock getmany does the same).
                    try:
                        await self.perform_seek()
                    except Exception as exc:
                        self.log.warning(f"exception performing seek when flow not active {exc}")
                    self.diag.unset_flag(CONSUMER_FETCHING)
                    continue
                if records:
                    generation = self.app.consumer_generation_id
                    await self.wait_first(
                        self._deliver_batch(records, active_partitions, generation), self.suspend_flow.wait()
                    )
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _deliver_batch(
        self, records: Mapping[Any, list[Any]], active_partitions: set[Any] | None, generation: int
    ) -> int:
        """Deliver one fetched batch to the conductor, with the stock per-message checks; how many went."""
        app = self.app
        callback = self.callback
        read_offset = self._read_offset
        acks_enabled_for = app.topics.acks_enabled_for
        tracked: set[Any] = set()
        delivered = since_yield = 0
        for tp, record in self.scheduler.iterate(records):
            if not self.flow_active or app.consumer_generation_id != generation:
                break  # the flow stopped, or a rebalance began: the rest is fetched again after it
            if not (active_partitions is None or tp in active_partitions or tp in self._buffered_partitions):
                continue
            if tp not in tracked:  # the highwater changes per fetch, not per message
                app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                tracked.add(tp)
            message = self._to_message(tp, record)
            since_yield += 1
            if since_yield > self.yield_every:
                await asyncio.sleep(0)
                since_yield = 0
                if not self.flow_active or app.consumer_generation_id != generation:
                    break
            offset = message.offset
            r_offset = read_offset[tp]
            if r_offset is not None and offset < r_offset:
                continue  # an older duplicate in a later fetch
            if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
                await self._add_gap(tp, r_offset + 1, offset)
            if self._commit_every is not None and self._n_acked >= self._commit_every:
                self._n_acked = 0
                await self.commit()
            await callback(message)
            read_offset[tp] = offset
            delivered += 1
        return delivered


class Transport(aiokafka_driver.Transport):
    """The stock aiokafka Faust transport with the batch-draining consumer."""

    Consumer: ClassVar[type] = Consumer


def register(scheme: str = SCHEME) -> None:
    """Make `<scheme>://host:port` select this transport in `faust.App(broker=...)` (before the app's
    transport is first created, i.e. before the worker starts)."""
    TRANSPORTS.aliases[scheme] = f"{__name__}:Transport"
