"""The org list against a real Redis: an org is listed before any of its data is written, so no reader sees
an org's answers while the org list (and the all-orgs endpoints) lack it."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from agents.pipeline import Batch, BatchProcessor
from streams.deadletter import DeadLetter
from streams.settings import Settings
from tables import queries
from tests.support import as_records, demo_events

pytestmark = pytest.mark.integration


async def test_an_org_is_listed_before_its_first_write(settings: Settings, redis: Redis) -> None:
    events = demo_events(300, seed=3)
    orgs = {e["org"] for _, e in events}
    unlisted_at_write: list[set[str]] = []

    async def keep(letters: list[DeadLetter]) -> None:
        assert not letters

    processor = BatchProcessor(settings, redis, keep)
    apply = processor.writer.apply

    async def checked(writes: list[Any]) -> dict[str, str]:
        # What a reader would see at the instant the orgs' data is written.
        unlisted_at_write.append({w.org for w in writes} - set(await queries.list_orgs(redis)))
        return await apply(writes)

    processor.writer.apply = checked  # type: ignore[method-assign]
    await processor.process(Batch.of(as_records(events)))
    assert unlisted_at_write, "nothing was applied"
    assert all(not unlisted for unlisted in unlisted_at_write), unlisted_at_write
    assert set(await queries.list_orgs(redis)) == orgs
