"""Every Lua script, run one way: its text is a `.lua` file in the `lua/` directory of the package whose
Python calls it (`tables/lua/`, `agents/lua/`), loaded once by `load`, and run by a `Script` with EVALSHA,
one call (`run`) or many pipelined in one round trip (`run_many`; on a Redis Cluster, where a pipeline
cannot carry EVALSHA, the calls run side by side, each to its key's primary).

Every key a script touches is passed in KEYS, never built inside the script, so a Redis Cluster routes it
to the one primary holding them (all of one call's keys share a hash tag, `{org}` mostly). A script is
loaded when Redis answers NOSCRIPT (a restart, `SCRIPT FLUSH`, or a replica just promoted, forgets
scripts), and only the calls that got that answer run again. (redis-py's own `Script` in a pipeline first
asks `SCRIPT EXISTS` in a round trip of its own, on every execute; with a read and an apply per batch
part that doubles the round trips, and the check waits behind whatever Redis is running.)

A script may start with libraries of the same directory (`include`): their text goes before the script's,
so shared Lua (`tables/lua/conversation.lua`: how a conversation's stored value is read) is written once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from hashlib import sha1
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import NoScriptError

Call = tuple[Sequence[Any], Sequence[Any]]  # (keys, args)


@dataclass(frozen=True)
class Lua:
    """A script's text as Redis runs it, and its SHA1 (what EVALSHA names it by)."""

    name: str  # `package/lua/name.lua`, for messages
    source: str
    sha: str


@cache
def load(package: str, name: str, include: tuple[str, ...] = ()) -> Lua:
    """The script `<package>/lua/<name>.lua`, after the libraries `include` names (files of the same
    directory), read once per process."""
    folder = files(package) / "lua"
    parts = [(folder / f"{part}.lua").read_text(encoding="utf-8") for part in (*include, name)]
    source = "\n".join(parts)
    return Lua(f"{package}/lua/{name}.lua", source, sha1(source.encode()).hexdigest())


class Script:
    """One script on one Redis (or Redis Cluster) client."""

    def __init__(self, redis: Redis, lua: Lua) -> None:
        self.redis = redis
        self.lua = lua

    @property
    def sha(self) -> str:
        return self.lua.sha

    async def run(self, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
        """The script's reply; an error reply other than NOSCRIPT is raised."""
        try:
            return await self._evalsha(keys, args)
        except NoScriptError:
            await self._load()
            return await self._evalsha(keys, args)

    async def run_many(self, calls: Sequence[Call]) -> list[Any]:
        """Each call's reply, in order; an error reply other than NOSCRIPT is raised."""
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        cluster = isinstance(self.redis, RedisCluster)
        for attempt in (1, 2):
            if cluster:
                results = await asyncio.gather(*(self._evalsha(*calls[i]) for i in todo), return_exceptions=True)
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
                elif isinstance(reply, BaseException):
                    raise reply
                else:
                    replies[i] = reply
            if not missing:
                break
            await self._load()
            todo = missing
        return replies

    async def _evalsha(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        return await self.redis.evalsha(self.sha, len(keys), *keys, *args)

    async def _load(self) -> None:
        """Load the script (on a Redis Cluster, on every primary)."""
        await self.redis.script_load(self.lua.source)
