"""Answers computed once per (org, query, data version), and conditional requests.

An org's aggregates change only when a batch is applied to it (each apply bumps `version` in the org's
`meta` hash, agents/planner.py), when a student is erased (the erasures' version), when its time zone is
set (`ai-analytics orgs tz`) or when a rebuild switches generations. A GET under an org whose answer is
read from the aggregate families alone (its route says so: `answered_by`, which names them) is a function
of those, of the query and of the clock's half hour (ranges relative to today, in any zone served, and
the last hour change with it). An org is named by the path's `{org}`, or by the `platform_key` query
parameter (the key's own org without one). So this middleware, for those GETs only:

- reads, in one round trip, what the `caller` dependency reads (the key and whether the org exists)
  plus the org's versions; a request that the route would refuse (no key, another org's key, an unknown
  org) goes to the route, which says why, and nothing is cached or served from the cache for it;
- names the answer by an `ETag` (a digest of generation, versions, half hour, host, path, the parsed query
  and, for a route whose answer depends on it, the key's role: a parameter given twice is left to the
  route, which refuses it); a request whose
  `If-None-Match` holds it gets `304 Not Modified` with no body;
- serves the answer from a bounded in-process cache when it has it, else lets the route compute it and
  keeps a 200's body; requests for an answer being computed wait for that computation (a hundred
  dashboards asking at once after an apply cost one computation, not a hundred). `Cache-Control: no-cache`: clients may keep an answer but must ask again (with
  `If-None-Match`) before using it, so a browser's dashboard revalidates by itself.

Every poller of an org shares one computation per data version; between two applies a dashboard's poll
is a Redis round trip and a dictionary lookup.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from functools import lru_cache
from hashlib import blake2b
from typing import Any

import orjson
from starlette.datastructures import Headers
from starlette.routing import compile_path

from api.auth import _token
from api.errors import ApiError
from api.params import parse_query
from tables import apikeys, keys
from tables.aggregates import FAMILIES
from tables.aggregates.base import Family

ANSWERED_BY = "x-answered-by"
PER_ROLE = "x-answered-per-role"
PLATFORM_KEY = "platform_key"  # the org of a route without `{org}` in its path (api/auth.platform_org)


def answered_by(*families: type[Family[Any]], per_role: bool = False) -> dict[str, Any]:
    """A route's `openapi_extra` saying that its answer is read from these aggregate families alone, so it
    is a function of the org's data and the query (not of the clock, as freshness is): the cache keeps such
    answers (an org-scoped GET, its `{org}` in the path), shared by every key that may read the org.
    `per_role`: the answer also depends on the key's role (users/details/ shows emails to a platform_admin
    only), and is kept once per role. OpenAPI shows them as `x-answered-by` and `x-answered-per-role`."""
    return {ANSWERED_BY: [family.name for family in families], **({PER_ROLE: True} if per_role else {})}


def cached_routes(app: Any) -> list[tuple[re.Pattern[str], bool]]:
    """The path patterns of the GETs marked `answered_by`, each with whether its answers are kept per role,
    read from the app's OpenAPI document (where the routers' prefixes are applied): each must name known
    families and its org, as an `{org}` path parameter or a `platform_key` query parameter (whose default
    is the key's own org)."""
    names = {family.name for family in FAMILIES}
    out = []
    for path, operations in app.openapi()["paths"].items():
        marked = operations.get("get", {}).get(ANSWERED_BY)
        if not marked:
            continue
        if unknown := set(marked) - names:
            raise ValueError(f"{path} is answered by unknown families: {sorted(unknown)}")
        pattern, _, convertors = compile_path(path)
        query = {p["name"] for p in operations["get"].get("parameters", []) if p.get("in") == "query"}
        if "org" not in convertors and PLATFORM_KEY not in query:
            raise ValueError(f"{path} is not scoped to an org: its answers cannot be cached")
        out.append((pattern, bool(operations["get"].get(PER_ROLE))))
    return out


MAX_ENTRIES = 4096
MAX_BODY = 1 << 20  # bytes; bigger answers are computed each time


class AnswerCache:
    def __init__(self, app: Any, max_entries: int = MAX_ENTRIES) -> None:
        self.app = app
        self.max_entries = max_entries
        self.entries: OrderedDict[str, tuple[bytes, bytes]] = OrderedDict()  # etag -> (content-type, body)
        self.computing: dict[str, asyncio.Future[None]] = {}  # etag -> done when its first request is answered
        self.hits = self.misses = self.not_modified = 0
        # read from the app's routes at the first request: (pattern, kept per role)
        self.routes: list[tuple[re.Pattern[str], bool]] | None = None

    def _org(self, scope: dict[str, Any]) -> tuple[str, bool] | None:
        """The org of a GET to a cached route ("" for the API key's own) and whether its answers are kept
        per role, else None."""
        if scope["type"] != "http" or scope["method"] != "GET":
            return None
        if self.routes is None:
            self.routes = cached_routes(scope["app"])
        for pattern, per_role in self.routes:
            if match := pattern.match(scope["path"]):
                if "org" in pattern.groupindex:
                    return match.group("org"), per_role
                pairs, _ = parse_query(scope.get("query_string", b""))
                return next((value for name, value in pairs if name == PLATFORM_KEY), ""), per_role
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        route = self._org(scope)
        etag = await self._etag(scope, *route) if route is not None else None
        if etag is None:
            await self.app(scope, receive, send)
            return
        headers = [(b"etag", etag.encode()), (b"cache-control", b"no-cache")]
        if etag in _if_none_match(scope):
            self.not_modified += 1
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        entry = self.entries.get(etag)
        if entry is None and (computing := self.computing.get(etag)) is not None:
            await asyncio.shield(computing)  # another request is computing this answer: share it
            entry = self.entries.get(etag)
        if entry is not None:
            self.hits += 1
            self.entries.move_to_end(etag)
            content_type, body = entry
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})
            return
        self.misses += 1
        done = self.computing.setdefault(etag, asyncio.get_running_loop().create_future())
        try:
            await self.app(scope, receive, self._keeping(send, etag, headers))
        finally:
            if self.computing.get(etag) is done:
                del self.computing[etag]
            if not done.done():
                done.set_result(None)

    def _keeping(self, send: Any, etag: str, headers: list[tuple[bytes, bytes]]) -> Any:
        """`send`, adding the ETag to a 200 and keeping its body once complete."""
        state: dict[str, Any] = {"status": 0, "content_type": b"application/json", "parts": []}

        async def wrapped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                if message["status"] == 200:
                    message = {**message, "headers": [*message.get("headers", []), *headers]}
                    for name, value in message["headers"]:
                        if name.lower() == b"content-type":
                            state["content_type"] = value
            elif message["type"] == "http.response.body" and state["status"] == 200:
                state["parts"].append(message.get("body", b""))
                if not message.get("more_body", False):
                    body = b"".join(state["parts"])
                    if len(body) <= MAX_BODY:
                        self.entries[etag] = (state["content_type"], body)
                        while len(self.entries) > self.max_entries:
                            self.entries.popitem(last=False)
            await send(message)

        return wrapped

    async def _etag(self, scope: dict[str, Any], org: str, per_role: bool) -> str | None:
        """The answer's name, or None when the route must answer (a refused caller, Redis away)."""
        try:
            token = _token(Headers(scope=scope))
        except ApiError:
            return None
        redis = scope["app"].state.aia.redis
        gen = scope.get("state", {}).get("generation")
        if gen is None:  # the generation served is unknown (Redis away): the route answers
            return None
        try:
            if not org:  # the key's own org (api/auth.platform_org)
                raw_key = await redis.hget(keys.api_keys(), apikeys.digest(token))
                org = "" if raw_key is None else _key(raw_key).org
                if not org or org == apikeys.ALL_ORGS:
                    return None
            async with redis.pipeline(transaction=False) as pipe:
                pipe.hget(keys.api_keys(), apikeys.digest(token))
                pipe.sismember(keys.orgs(), org)
                pipe.hget(keys.meta(gen, org), keys.DATA_VERSION)
                pipe.hget(keys.erasures(org), keys.ERASURES_VERSION)
                pipe.hget(keys.time_zones(), org)
                raw_key, exists, version, erased, zone = await pipe.execute()
        except Exception:
            return None
        if raw_key is None or not exists or not (key := _key(raw_key)).allows_org(org):
            return None
        query = _query(scope)
        if query is None:
            return None
        # The half hour: an answer that names no day (7d, a zone's today, the last hour) changes with it
        # (every zone served starts its days on a half hour).
        clock = int(time.time()) // 1800
        host = Headers(scope=scope).get("host", "")  # paged answers link their next page on the host asked
        name = "\0".join(
            str(part) for part in
            (keys.meta(gen, org), version, erased, zone, clock, host, key.role if per_role else "", scope["path"], query)
        )  # fmt: skip
        return '"' + blake2b(name.encode(), digest_size=12).hexdigest() + '"'


@lru_cache(maxsize=1024)
def _key(raw: bytes) -> apikeys.ApiKey:
    """A stored key record, parsed (the same few keys poll again and again)."""
    return apikeys.ApiKey.from_json(raw)


def _query(scope: dict[str, Any]) -> str | None:
    """The query's parameters, parsed (decoded, in a canonical order: `a=1&b=2` and `b=%32&a=1` are one
    answer); None when one is given twice, which the route refuses (api/params.single_values)."""
    pairs, repeated = parse_query(scope.get("query_string", b""))
    return None if repeated is not None else orjson.dumps(pairs).decode()


def _if_none_match(scope: dict[str, Any]) -> list[str]:
    for name, value in scope.get("headers", []):
        if name == b"if-none-match":
            return [tag.strip().removeprefix("W/") for tag in value.decode("latin-1").split(",")]
    return []
