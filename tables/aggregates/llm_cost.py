"""LLM cost: the cost (nano-dollars, exact), tokens and observations of an org's LLM calls per hour and day,
per model, and attributed to the student and mentor of the session they belong to; per day, each
mentor's sessions' costs (for the per-mentor report).

Rules (docs/semantics.md): an observation counts once by its `event_id`; one re-sent with the same id
**replaces** the applied one when it is newer by (event time, offset), its old contribution taken back
(the observations hash keeps what each applied version added: `AppliedObservation`). A session's cost by
hour is kept in its conversation's state and counts for the student and mentor of its earliest message,
whichever arrives first: what it adds is derived from the conversation's final state (`attributed`).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from streams.prices import PriceTable
from streams.schemas import LlmObservation
from tables import ids, keys
from tables.aggregates.base import Batch, Counted
from tables.buckets import Grain
from tables.conversations import ConversationState, is_newer

GRAINS = (Grain.HOUR, Grain.DAY)
# Bucket fields (hourly and daily): cost, tokens, observations, observations no price was known for; the
# cost per model, student and mentor is `cost_field(kind, value)`.
COST = "cost_nanos"
TOKENS_IN = "tokens_in"
TOKENS_OUT = "tokens_out"
OBSERVATIONS = "observations"
UNPRICED = "unpriced"
TOTALS = (COST, TOKENS_IN, TOKENS_OUT, OBSERVATIONS, UNPRICED)


def cost_field(kind: str, value: str) -> str:
    """A bucket field of LLM cost (nano-dollars) for one student (`u`), mentor (`m`) or model (`model`)."""
    return f"{COST}|{kind}|{value}"


@dataclass(frozen=True, slots=True)
class AppliedObservation:
    """What the observations hash records for an applied observation: its contribution, its version, the
    model and session it counts for, and the day it arrived (for pruning past the dedup window)."""

    cost: int
    input_tokens: int
    output_tokens: int
    unpriced: int
    ts_ms: int
    offset: int
    model: str
    session: str | None
    arrival_day: int

    def value(self) -> str:
        return orjson.dumps(
            [self.cost, self.input_tokens, self.output_tokens, self.unpriced, self.ts_ms, self.offset,
             self.model, self.session, self.arrival_day]
        ).decode()  # fmt: skip

    @classmethod
    def parse(cls, value: str) -> AppliedObservation:
        return cls(*orjson.loads(value))


class LlmCost:
    name = "llm_cost"

    def __init__(self, prices: PriceTable) -> None:
        self.prices = prices

    def fold(self, b: Batch, counted: Counted) -> None:
        """Apply (or replace) each observation's cost and tokens in the org's and its model's buckets, and
        its session's cost by hour; an observation that changes nothing (a copy, an older version) is
        skipped."""
        w, state = b.w, b.state
        applied = dict(state.observations)
        seen = keys.observations(b.gen, b.org)
        for ev in counted.observations:
            raw = applied.get(ev.event_id)
            prev = None if raw is None else AppliedObservation.parse(raw)
            new = self._applied(ev, prev, b.arrival_day)
            if new is None:
                continue
            w.events += 1
            if prev is None:
                b.count(ev)
            value = applied[ev.event_id] = new.value()
            w.mark_seen(seen, ev.event_id, state.observations.get(ev.event_id), value)
            for version, sign in ((prev, -1), (new, 1)):
                if version is None:
                    continue
                for fld, n in zip(
                    TOTALS,
                    (version.cost, version.input_tokens, version.output_tokens, 1, version.unpriced),
                    strict=True,
                ):
                    b.add(GRAINS, version.ts_ms, (fld,), sign * n)
                b.add(GRAINS, version.ts_ms, (cost_field("model", version.model),), sign * version.cost)
                if version.session is None:
                    continue
                # The session's cost by hour: attributed to its student and mentor from its final state.
                conv = b.conversation(version.session, must_be_read=True)
                hour = Grain.HOUR.index(version.ts_ms)
                conv.costs = {**conv.costs, hour: conv.costs.get(hour, 0) + sign * version.cost}
                if sign > 0:  # the latest time of each trace: a maximum, whatever the order
                    conv.traces = {**conv.traces, ev.trace_id: max(ev.ts_ms, conv.traces.get(ev.trace_id, 0))}

    def _applied(
        self, ev: LlmObservation, prev: AppliedObservation | None, arrival_day: int
    ) -> AppliedObservation | None:
        """What the observations hash will record for the observation, or None when it changes nothing."""
        if prev is not None and not is_newer(
            (ev.ts_ms, ev.src_offset, ev.event_id), (prev.ts_ms, prev.offset, ev.event_id)
        ):
            return None
        cost = ev.cost_nanos
        unpriced = 0
        if cost is None:
            cost = self.prices.cost_nanos(ev.model, ev.input_tokens, ev.output_tokens)
            if cost is None:
                cost, unpriced = 0, 1
        session = None if ev.session_id is None else ids.normalize(ev.session_id)
        return AppliedObservation(
            cost, ev.input_tokens, ev.output_tokens, unpriced, ev.ts_ms, ev.src_offset, ev.model, session, arrival_day
        )

    def changed(self, b: Batch, sums: None, cid: str, before: ConversationState, after: ConversationState) -> None:
        """What the session's cost adds to its student's and mentor's buckets and to the day's per-mentor
        session costs: the difference between its state after the batch and before."""
        if before.costs == after.costs and before.attribution() == after.attribution():
            return
        w, gen, org = b.w, b.gen, b.org
        old_cost, new_cost = attributed(cid, before), attributed(cid, after)
        for slot in old_cost.keys() | new_cost.keys():
            n = new_cost.get(slot, 0) - old_cost.get(slot, 0)
            if not n:
                continue
            kind, grain, index, member = slot
            if kind == "z":
                key = keys.session_costs(gen, org, index)
                w.zincr(key, member, n)
                w.expire_at(key, b.retention.expire_at_s(Grain.DAY, index))
            else:
                b.add_at(grain, index, member, n)

    def flush(self, b: Batch, sums: None) -> None:
        return


def attributed(cid: str, conv: ConversationState) -> dict[tuple[str, Grain, int, str], int]:
    """What a session's cost adds to its student's and mentor's buckets (hour and day), and to the day's
    per-mentor session costs: a function of the conversation's state alone."""
    who = conv.attribution()
    out: dict[tuple[str, Grain, int, str], int] = {}
    if who is None:
        return out
    student, mentor = who
    fields = (cost_field("u", student), cost_field("m", mentor))
    for hour, n in conv.costs.items():
        day = hour // 24
        for grain, index in ((Grain.HOUR, hour), (Grain.DAY, day)):
            for fld in fields:
                slot = ("h", grain, index, fld)
                out[slot] = out.get(slot, 0) + n
        zslot = ("z", Grain.DAY, day, keys.session_cost_member(mentor, cid))
        out[zslot] = out.get(zslot, 0) + n
    return out
