"""Lua scripts run many at a time: one pipelined round trip of EVALSHAs (on a Redis Cluster, where a
pipeline cannot carry EVALSHA, the calls run side by side, each to its key's primary).

redis-py's own `Script` in a pipeline first asks `SCRIPT EXISTS` in a round trip of its own, on every
execute; with a read and an apply per batch part that doubles the round trips, and the check waits behind
whatever Redis is running. Here a script is loaded when Redis answers NOSCRIPT (a restart, or a replica
just promoted, forgets scripts), and only the calls that got that answer run again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from hashlib import sha1
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import NoScriptError

Call = tuple[Sequence[str], Sequence[Any]]  # (keys, args)


class Script:
    def __init__(self, redis: Redis, source: str) -> None:
        self.redis = redis
        self.source = source
        self.sha = sha1(source.encode()).hexdigest()

    async def run_many(self, calls: Sequence[Call]) -> list[Any]:
        """Each call's reply, in order; an error reply other than NOSCRIPT is raised."""
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        cluster = isinstance(self.redis, RedisCluster)
        for attempt in (1, 2):
            if cluster:
                results = await asyncio.gather(
                    *(self.redis.evalsha(self.sha, len(calls[i][0]), *calls[i][0], *calls[i][1]) for i in todo),
                    return_exceptions=True,
                )
            else:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for i in todo:
                        keys, args = calls[i]
                        pipe.evalsha(self.sha, len(keys), *keys, *args)
                    results = await pipe.execute(raise_on_error=False)
            missing = []
            for i, reply in zip(todo, results, strict=True):
                if isinstance(reply, NoScriptError) and attempt == 1:
                    missing.append(i)
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    replies[i] = reply
            if not missing:
                break
            await self.redis.script_load(self.source)
            todo = missing
        return replies
