r"""Faust (faust-streaming) consumer/conductor/stream subclasses that remove per-message scheduling.

The consumer drains each fetched batch with one flow check (``wait_first``) per batch instead of
per message; the conductor and ``Stream.take_events`` lose their per-message awaits/loop hops.

Written against faust-streaming 0.15.3 (identical to github faust-streaming/faust master
181b1840 for every file touched here) and aiokafka 0.14.0.

The problem
-----------
Stock ``faust.transport.consumer.Consumer._drain_messages`` (consumer.py, lines 1170-1249 in
0.15.3) hands every single message to the conductor with::

    await self.wait_first(callback(message), self.suspend_flow.wait())

``mode.Service.wait_first`` (mode/services.py 758-801) wraps *each* of its arguments plus the
service's ``_stopped``/``_crashed`` events in a new Task (4 ``ensure_future`` calls), runs an
``asyncio.wait(FIRST_COMPLETED)`` over them (which adds and removes a done-callback on each),
then cancels the three losers -- which the event loop must then step once more each to unwind.
That is ~8 Tasks/wakeups and several loop iterations per message, ~150-200 us per event on a
2-core box, so a bare agent tops out at 4-7k events/s whatever the batch knobs say.

The only reason for the race is that ``callback(message)`` -- the conductor's ``on_message`` --
may *block*: on ``app.flow_control`` (suspended during a rebalance), on the producer buffer
(``wait_until_ebb``) or on a full stream queue (``chan.put``). When ``Consumer.stop_flow()``
sets ``suspend_flow`` the blocked delivery must be abandoned so that the drain loop can go back
to ``_wait_next_records`` and wait for ``can_resume_flow``.

What this module changes (three pieces, each through a Faust extension point)
----------------------------------------------------------------------------
1. :class:`Consumer` (= :class:`FastDrainMixin` + stock aiokafka ``Consumer``): one
   ``wait_first`` per fetched batch instead of per message.  Detailed below.
2. :class:`FastConductor` / :class:`FastConductorCompiler` (``Transport.Conductor``): the
   per-message ``async with`` on the callback-map lock and the unconditional ``await``\ s on flow
   control and the producer buffer become plain tests that only ``await`` when they would block.
3. :class:`FastStream` (``faust.App(Stream=FastStream)``): ``take_events`` takes events off the
   channel queue in bulk instead of one event loop iteration + processor call per event.

Measured on a 2-core box, ``take_events(5000)`` + ``orjson.loads``: stock 5.2-6.8k events/s;
pieces 1+2 alone ~14k; piece 3 alone ~6k (the consumer is still the wall); all three ~20k
(17.5-23k depending on what else the machine runs; the method and one run's figures are in
docs/faust.md, "The consumer change, written up for upstream").  The pieces compound because
every stage paid per-message scheduling: removing one only moves the wall to the next.

:class:`FastDrainMixin` overrides ``_drain_messages`` only.  It fetches a batch exactly like the
stock ``getmany`` (same ``_wait_next_records``, same ``scheduler.iterate`` round robin, same
per-message ``flow_active`` / generation-id / active-partition filters, same read-offset and
gap bookkeeping, same ``commit_every`` handling), but delivers the *whole batch* inside one
Task that is raced against ``suspend_flow`` once::

    await self.wait_first(self._deliver_batch(...), self.suspend_flow.wait())

Inside the batch task each message is delivered with a plain ``await callback(message)``.
In the common case the conductor callback never suspends (flow control active, producer
buffer low, queue not full), so delivery is a synchronous chain of coroutine calls with no
Task, Future or loop iteration.  The task yields to the loop every ``yield_every`` messages
(stock uses the same ``sleep(0)`` every 100 messages) so agents and the commit timer run.

Why it stays correct
--------------------
* **pause/resume (stop_flow/resume_flow)**: if ``suspend_flow`` is set while the batch task is
  blocked (or at one of its periodic ``sleep(0)`` yields), ``wait_first`` returns and cancels
  the batch task, exactly as stock cancels the single in-flight ``callback``.  In addition the
  batch loop re-reads the ``flow_active`` flag before *every* message (a plain attribute read,
  as stock ``getmany`` does), so nothing is delivered after ``stop_flow`` even when the batch
  never blocks.  The drain loop then calls the inherited ``_wait_next_records`` which waits for
  ``can_resume_flow`` and, if flow is inactive when a fetch returns, ``perform_seek`` back to the
  committed offsets (unchanged stock logic).
* **rebalance**: the per-message generation-id check is kept (a batch fetched in generation N
  is abandoned as soon as ``app.consumer_generation_id`` changes), as is the
  ``active_partitions``/``_buffered_partitions`` filter that drops records of paused or revoked
  partitions.  Streams additionally drop events whose ``message.generation_id`` is stale (stock
  behaviour in ``Stream._py_aiter`` / the Cython ``StreamIterator``).  Revocation still clears
  queues via ``flow_control.clear()`` and ``perform_seek`` repositions the fetcher on resume.
* **read offsets**: ``_read_offset[tp]`` is set after a message was delivered, as stock does,
  so duplicate records in a later fetch (``offset < read_offset``) are still dropped.  One
  deliberate difference: if delivery is *cancelled* by ``suspend_flow`` stock still advances
  the read offset for the abandoned message; here it does not.  That only matters until the
  next ``perform_seek`` (which always follows a resume) rewrites the read offsets anyway.
* **acks/commits**: untouched.  Messages still go through the conductor, so ``incref``, stream
  tracking (``Stream`` adds them to ``consumer._unacked_messages``), ``Consumer.ack`` and the
  ``_acked``/``_committed_offset`` bookkeeping, gap detection and the periodic
  ``_commit_handler`` behave exactly as stock.
* **errors/stop**: an exception raised by the callback propagates out of ``wait_first`` (it
  re-raises the task's exception) into ``_drain_messages`` with stock error handling; stopping
  the consumer or fetcher also ends the race (``wait_first`` watches ``_stopped``/``_crashed``)
  and ``Fetcher.on_stop`` cancels the drainer, whose ``wait_first`` cancels the batch task.

Registering it
--------------
The stream class is an App setting: ``faust.App(..., Stream=FastStream)``.  For the transport:

``faust.transport.drivers.TRANSPORTS`` is a ``mode.utils.imports.FactoryMapping`` keyed by URL
scheme (``kafka`` and ``aiokafka`` -> ``faust.transport.drivers.aiokafka:Transport``) that also
reads the ``faust.transports`` setuptools entry-point namespace.  Either

* call :func:`register` (adds the ``fastkafka`` alias at runtime) before the app creates its
  transport, and use ``broker="fastkafka://host:port"``; or
* declare the entry point in the project's ``pyproject.toml``::

      [project.entry-points."faust.transports"]
      fastkafka = "agents.faust.transport:Transport"

The producer side uses the same URL scheme (``broker_producer`` defaults to ``broker``) and
inherits the stock aiokafka ``Producer`` unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping, MutableSet, Sequence
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    cast,
)

from faust.exceptions import KeyDecodeError, ValueDecodeError
from faust.streams import Stream as _StockStream
from faust.streams import _tracks_buffer_agen
from faust.transport.conductor import Conductor as _StockConductor
from faust.transport.conductor import ConductorCompiler as _StockConductorCompiler
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as _aiokafka_driver
from faust.types import TP, ChannelT, ConsumerT, EventT, Message
from faust.types.transports import ConductorT, ConsumerCallback
from mode import Service, ServiceT, want_seconds

__all__ = [
    "SCHEME",
    "Consumer",
    "FastConductor",
    "FastConductorCompiler",
    "FastDrainMixin",
    "FastStream",
    "Transport",
    "register",
]

#: URL scheme under which :func:`register` installs :class:`Transport`.
SCHEME = "fastkafka"

RecordMap = Mapping[TP, list[Any]]


class FastDrainMixin:
    """Replace the per-message ``wait_first`` of ``_drain_messages`` with one per batch.

    Mix into any ``faust.transport.consumer.Consumer`` subclass (it only uses attributes every
    Faust consumer has).  See the module docstring for the full correctness argument.
    """

    #: ``sleep(0)`` after this many delivered messages, as stock ``_drain_messages`` does,
    #: so that stream/agent tasks and timers get loop time during a large batch.
    yield_every: ClassVar[int] = 100

    # Attributes provided by faust.transport.consumer.Consumer (declared for type checkers).
    if TYPE_CHECKING:  # pragma: no cover
        app: Any
        log: Any
        diag: Any
        callback: ConsumerCallback
        flow_active: bool
        suspend_flow: asyncio.Event
        scheduler: Any
        consumer_stopped_errors: tuple[type[BaseException], ...]
        transport: Any
        _read_offset: Any
        _buffered_partitions: set[TP]
        _commit_every: int | None
        _n_acked: int
        should_stop: bool

    async def _drain_messages(self, fetcher: ServiceT) -> None:
        """Fetch batches and deliver each one under a single ``suspend_flow`` race.

        Overrides ``faust.transport.consumer.Consumer._drain_messages`` (0.15.3 lines
        1170-1249) and inlines the batch half of ``Consumer.getmany`` (lines 693-774); the
        fetch itself is the inherited ``_wait_next_records`` (lines 776-811).
        """
        this = cast(Any, self)
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        set_flag = this.diag.set_flag
        unset_flag = this.diag.unset_flag
        wait_first = this.wait_first
        suspend_flow = this.suspend_flow

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                # Stock yields here too ("sometimes getmany is called in a loop never
                # releasing to the event loop").
                await this.sleep(0)
                if this.should_stop:
                    continue
                records, active_partitions = await this._wait_next_records(1.0)
                if records is None or this.should_stop:
                    unset_flag(CONSUMER_FETCHING)
                    continue
                if not this.flow_active:
                    # Same as stock getmany: a fetch that returned while flow was stopped
                    # may have advanced positions; go back to the committed offsets.
                    this.log.dev("getmany called while flow not active. Seek back to committed offsets.")
                    try:
                        await this.perform_seek()
                    except Exception as ex:
                        this.log.warning(f"exception performing seek when flow not active {ex}")
                    unset_flag(CONSUMER_FETCHING)
                    continue
                if records:
                    generation_id = this.app.consumer_generation_id
                    # ONE race per batch instead of one per message.
                    await wait_first(
                        self._deliver_batch(records, active_partitions, generation_id),
                        suspend_flow.wait(),
                    )
                unset_flag(CONSUMER_FETCHING)
        except this.consumer_stopped_errors:
            if this.transport.app.should_stop:
                this.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if this.transport.app.should_stop:
                this.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            this.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    async def _deliver_batch(
        self,
        records: RecordMap,
        active_partitions: set[TP] | None,
        generation_id: int,
    ) -> int:
        """Deliver one fetched batch to the conductor; return how many messages were delivered.

        Runs as a single Task raced against ``suspend_flow``.  Per message it keeps every
        cheap check of stock ``getmany``/``_drain_messages`` (flow flag, generation id, active
        partitions, read offset, gaps, ``commit_every``) and drops only the Task machinery.
        """
        this = cast(Any, self)
        app = this.app
        callback = this.callback
        to_message = this._to_message
        highwater = this.highwater
        track_tp_end_offset = app.monitor.track_tp_end_offset
        buffered_partitions = this._buffered_partitions
        read_offset = this._read_offset
        get_read_offset = read_offset.__getitem__
        set_read_offset = read_offset.__setitem__
        commit_every = this._commit_every
        acks_enabled_for = app.topics.acks_enabled_for
        yield_every = self.yield_every
        sleep = asyncio.sleep

        delivered = 0
        since_yield = 0
        tracked_tps: set[TP] = set()
        for tp, record in this.scheduler.iterate(records):
            if not this.flow_active:
                break
            if app.consumer_generation_id != generation_id:
                this.log.dev("Generation id changed from %r. Abandoning batch.", generation_id)
                break
            if not (active_partitions is None or tp in active_partitions or tp in buffered_partitions):
                continue
            if tp not in tracked_tps:
                # Stock calls this per message; the highwater only changes per fetch and the
                # monitor keeps the last value, so once per tp per batch is equivalent.
                track_tp_end_offset(tp, highwater(tp))
                tracked_tps.add(tp)
            message = to_message(tp, record)

            since_yield += 1
            if since_yield > yield_every:
                await sleep(0)
                since_yield = 0
                # Flow may have been stopped while we yielded.
                if not this.flow_active or app.consumer_generation_id != generation_id:
                    break

            offset = message.offset
            r_offset = get_read_offset(tp)
            if r_offset is None or offset >= r_offset:
                gap = offset - (r_offset or 0)
                if gap > 1 and r_offset and acks_enabled_for(message.topic):
                    await this._add_gap(tp, r_offset + 1, offset)
                if commit_every is not None and this._n_acked >= commit_every:
                    this._n_acked = 0
                    await this.commit()
                await callback(message)
                set_read_offset(tp, offset)
                delivered += 1
            else:
                this.log.dev("DROPPED MESSAGE ROFF %r: k=%r v=%r", offset, message.key, message.value)
        return delivered


class Consumer(FastDrainMixin, _aiokafka_driver.Consumer):
    """The stock aiokafka Faust consumer with :class:`FastDrainMixin`'s batch drain."""


class FastConductorCompiler(_StockConductorCompiler):
    r"""Per-partition delivery closure with the two per-message ``await``\ s made conditional.

    Copy of stock ``ConductorCompiler.build`` (conductor.py 54-207 in 0.15.3) with two changes:

    * ``await app.flow_control.acquire()`` -> only awaited when ``flow_control`` is suspended
      (``FlowControlEvent.acquire`` is literally ``if self._suspend.is_set(): await
      self._resume.wait()``, so this is the same test without creating a coroutine);
    * ``await producer.buffer.wait_until_ebb()`` -> only awaited when the producer buffer holds
      more than ``buffer.max_messages`` (the test ``wait_until_ebb`` itself makes).  For the
      non-threaded producer the length is read from ``buffer.pending`` directly instead of the
      ``ProducerBuffer.size`` property, which looks up ``app.conf.producer_threaded`` (a settings
      descriptor, ~3 us) on every call; with ``producer_threaded`` stock's path is kept.

    Decoding, multi-channel ``incref``, queue-full handling and decode-error acking are unchanged.
    """

    def build(self, conductor: Any, tp: TP, channels: MutableSet[Any]) -> Callable[[Message], Any]:
        app = conductor.app
        len_: Callable[[Any], int] = len
        consumer_on_buffer_full = app.consumer.on_buffer_full
        consumer_on_buffer_drop = app.consumer.on_buffer_drop
        flow_control = app.flow_control
        flow_suspended = flow_control._suspend.is_set
        acquire_flow_control: Callable[[], Any] = flow_control.acquire
        buffer = app.producer.buffer
        wait_until_producer_ebb = buffer.wait_until_ebb
        producer_threaded = bool(app.conf.producer_threaded)
        max_messages = buffer.max_messages
        on_topic_buffer_full = app.sensors.on_topic_buffer_full

        def on_pressure_high() -> None:
            on_topic_buffer_full(tp)
            consumer_on_buffer_full(tp)

        def on_pressure_drop() -> None:
            consumer_on_buffer_drop(tp)

        async def on_message(message: Message) -> None:
            if flow_suspended():
                await acquire_flow_control()
            if producer_threaded or len_(buffer.pending._queue) > max_messages:
                await wait_until_producer_ebb()
            channels_n = len_(channels)
            if channels_n:
                message.incref(channels_n)
                event: EventT[Any] | None = None
                event_keyid: tuple[Any, Any] | None = None
                delivered: set[Any] = set()
                full: list[tuple[EventT[Any], Any]] = []
                try:
                    for chan in channels:
                        keyid = chan.key_type, chan.value_type
                        if event is None:
                            event = await chan.decode(message, propagate=True)
                            event_keyid = keyid
                            dest_event = event
                        elif keyid == event_keyid:
                            dest_event = event
                        else:
                            dest_event = await chan.decode(message, propagate=True)
                        queue = chan.queue
                        if queue.full():
                            full.append((dest_event, chan))
                            continue
                        queue.put_nowait_enhanced(
                            dest_event,
                            on_pressure_high=on_pressure_high,
                            on_pressure_drop=on_pressure_drop,
                        )
                        delivered.add(chan)
                    if full:
                        for _ in full:
                            on_topic_buffer_full(tp)
                        await asyncio.wait(
                            [asyncio.ensure_future(dest_chan.put(dest_event)) for dest_event, dest_chan in full],
                            return_when=asyncio.ALL_COMPLETED,
                        )
                except KeyDecodeError as exc:
                    remaining = channels - delivered
                    message.ack(app.consumer, n=len(remaining))
                    for channel in remaining:
                        await channel.on_key_decode_error(exc, message)
                        delivered.add(channel)
                except ValueDecodeError as exc:
                    remaining = channels - delivered
                    message.ack(app.consumer, n=len(remaining))
                    for channel in remaining:
                        await channel.on_value_decode_error(exc, message)
                        delivered.add(channel)

        return on_message


class FastConductor(_StockConductor):
    r"""Stock ``Conductor`` with :class:`FastConductorCompiler` and a lock-free fast lookup.

    Stock ``Conductor.on_message`` (conductor.py 300-305) does ``async with
    self._tp_to_callback_lock`` around a dict lookup for every message.  The lock only guards
    against reading ``_tp_to_callback`` while ``_update_indices`` rebuilds it (it holds the lock
    across ``await``\ s).  Here the lookup happens without ``async with`` when the lock is free
    -- in single-threaded asyncio nothing can take it between the test and the read, so this is
    exactly the state an uncontended ``async with`` would observe -- and falls back to
    ``async with`` when it is held.  The ``ConductorCompiler`` is swapped for the fast one.
    The Cython ``ConductorHandler`` (if a build ships one) is not used.
    """

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._compiler = FastConductorCompiler()

    def _build_handler(self, tp: TP, channels: MutableSet[Any]) -> Callable[[Message], Any]:
        return self._compiler.build(self, tp, channels)

    def _compile_message_handler(self) -> Callable[[Message], Any]:
        if self.app.client_only:
            return super()._compile_message_handler()
        get_callback_for_tp = self._tp_to_callback.__getitem__

        async def on_message(message: Message) -> None:
            lock = self._tp_to_callback_lock
            if lock.locked():
                async with lock:
                    callback = get_callback_for_tp(message.tp)
            else:
                callback = get_callback_for_tp(message.tp)
            await callback(message)

        return on_message


class Transport(_aiokafka_driver.Transport):
    """The stock aiokafka Faust transport with :class:`Consumer` and :class:`FastConductor`."""

    Consumer: ClassVar[type[ConsumerT]] = cast(type[ConsumerT], Consumer)
    Conductor: ClassVar[type[ConductorT]] = cast(type[ConductorT], FastConductor)


def register(scheme: str = SCHEME) -> None:
    """Make ``<scheme>://host:port`` select :class:`Transport` in ``faust.App(broker=...)``.

    Must run before the app's transport is first created (``app.transport``/``app.consumer``,
    i.e. before the worker starts); importing this module early and calling it is enough.
    """
    TRANSPORTS.aliases[scheme] = f"{__name__}:Transport"


class FastStream(_StockStream):  # type: ignore[type-arg]
    """``faust.Stream`` whose ``take_events`` pulls events straight off the channel queue in bulk.

    Install with ``faust.App(..., Stream=FastStream)`` (the ``Stream`` setting is Faust's own
    extension point; agents create their streams through ``app.stream`` -> ``conf.Stream``).

    Stock ``take_events`` (streams.py 456-555) registers an ``add_to_buffer`` *processor* and
    starts a passive drainer task that iterates the stream event by event: per event that is an
    ``await sleep(0)`` (one full event-loop iteration), ``Channel.__anext__`` -> ``queue.get()``,
    ``_prepare_event``, ``maybe_async(processor(value))``, ``on_merge`` and ``after``; then, once
    the batch was consumed, one ``await self.ack(event)`` coroutine per event.

    The fast path here does exactly the per-event *bookkeeping* of that chain, inline, and none of
    the scheduling: it takes every event already queued with ``get_nowait`` (a slow ``get`` only
    when the queue is empty), and for each event

    * drops it if ``app.flow_control`` is suspended or its ``generation_id`` is stale (stock
      ``StreamIterator._prepare_event`` drops these without acking, and so does this);
    * marks it tracked / adds it to ``consumer._unacked_messages`` / fires ``on_message_in``
      when its topic is an acking topic (the inlined ``Consumer.track_message``);
    * fires ``on_stream_event_in`` and counts ``events_total``;

    then yields the list and, after the caller is done with it, acks every event (the body of
    ``Stream.ack``: ``event.ack()``, ``on_stream_event_out``, ``on_message_out``) -- the same
    order and the same objects as stock, so commits, ``wait_empty`` and rebalances see the same
    unacked/acked state.  ``within`` keeps its stock meaning: a non-empty batch is yielded at the
    latest ``within`` seconds after collection started.

    Two deliberate differences from stock, both on the monitoring side only:
    ``on_stream_event_out`` receives the ``state`` that ``on_stream_event_in`` returned (stock
    ``take_events`` acks through ``Stream.ack``, which passes ``None``, so the ``Monitor`` never
    decrements ``events_active`` nor records ``events_runtime`` for ``take_events`` agents); and
    when ``Actor.cancel()`` throws ``StopAsyncIteration`` into the channel, the events already
    collected are yielded and acked and the generator ends (stock yields its buffer once the
    stream stops).  Without that handling the exception escaped as ``RuntimeError: async
    generator raised StopAsyncIteration``, crashed the agent during shutdown, and in the rebalance
    test that run was the only one with redeliveries after a *graceful* leave (1,693 events).

    The fast path is used only when it is equivalent to stock: the stream reads a channel queue
    directly, has no processors (``filter``/``through``/``group_by``/agent reply processors) and
    is not a join/combined stream.  Otherwise it defers to ``Stream.take_events``.
    """

    def _fast_take_ok(self) -> bool:
        return (
            isinstance(self.channel, ChannelT)
            and not self._processors
            and self.join_strategy is None
            and not self.combined
        )

    @_tracks_buffer_agen
    async def take_events(self, max_: int, within: Any) -> AsyncGenerator[Sequence[EventT[Any]], None]:
        """Buffer up to ``max_`` events, at most ``within`` seconds; yield them; then ack them."""
        if not self._fast_take_ok():
            async for batch in super().take_events(max_, within):
                yield batch
            return
        timeout: float | None = want_seconds(within) if within else None
        app = self.app
        loop = asyncio.get_running_loop()
        channel = cast(Any, self.channel)
        queue = channel.queue
        errors = queue._errors
        q_empty = queue.empty
        q_get_nowait = queue.get_nowait
        q_get = queue.get
        flow_control_active = app.flow_control.is_active
        acking_topics = app.topics.acking_topics
        unacked = cast(Any, app.consumer)._unacked_messages
        on_message_in = self._on_message_in
        on_stream_event_in = self._on_stream_event_in
        on_stream_event_out = self._on_stream_event_out
        on_message_out = self._on_message_out

        self._finalized = True
        started_here = await self.maybe_start()
        try:
            while not self.should_stop:
                events: list[EventT[Any]] = []
                states: list[Any] = []
                add = events.append
                add_state = states.append
                deadline = loop.time() + timeout if timeout is not None else None
                # ``Actor.cancel()`` (agents/actor.py 59-61) ends iteration by throwing
                # StopAsyncIteration into the channel queue.  Stock ``_c_aiter`` swallows it
                # and ends the passive drainer; stock ``take_events`` then still yields what
                # it had buffered.  Do the same, then end this generator.
                exhausted = False
                try:
                    while len(events) < max_:
                        if errors:
                            raise errors.popleft()
                        if q_empty():
                            try:
                                if deadline is None:
                                    item = await q_get()
                                else:
                                    remaining = deadline - loop.time()
                                    if remaining <= 0:
                                        break
                                    item = await asyncio.wait_for(q_get(), remaining)
                            except TimeoutError:
                                break
                        else:
                            item = q_get_nowait()
                        if not isinstance(item, EventT):
                            raise TypeError(f"FastStream.take_events expects events on {channel!r}, got {item!r}")
                        message = item.message
                        if not flow_control_active() or message.generation_id != app.consumer_generation_id:
                            continue  # stale (pre-rebalance) event: stock drops it unacked too
                        tp = message.tp
                        offset = message.offset
                        if message.topic in acking_topics and not message.tracked:
                            message.tracked = True
                            unacked.add(message)
                            on_message_in(tp, offset, message)
                        add_state(on_stream_event_in(tp, offset, self, item))
                        add(item)
                except StopAsyncIteration:
                    exhausted = True
                if not events:
                    if exhausted:
                        return
                    continue
                self.events_total += len(events)
                try:
                    yield events
                finally:
                    for event, state in zip(events, states, strict=True):
                        last = event.ack()
                        message = event.message
                        on_stream_event_out(message.tp, message.offset, self, event, state)
                        if last:
                            on_message_out(message.tp, message.offset, message)
                if exhausted:
                    return
        finally:
            self._channel_stop_iteration(channel)
            if started_here:
                await self.stop()
                self.service_reset()
