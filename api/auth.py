"""Who is calling: `Authorization: Api-Token <key>` (or `Token <key>`; the scheme in any case, as Django REST
framework reads it), checked against the org in the path.

401 without a key or with an unknown one; 403 for a key scoped to another org, whether or not that org
exists (no existence leak); 404 for an org that does not exist, to an all-orgs key.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi import Path as PathParam
from starlette.datastructures import Headers

from api.errors import ApiError
from api.state import State
from tables import apikeys

ORG = Annotated[str, PathParam(description="The org (tenant) whose analytics are read.", max_length=128)]
USER = Annotated[str, PathParam(description="The caller's user id, as in the platform's API.", max_length=256)]


# The schemes, compared as Django REST framework's TokenAuthentication compares its keyword: the header's
# bytes split on ASCII whitespace, the first word lowered in ASCII only, so `api-token` and `API-TOKEN` match
# and no look-alike (an en dash, a Cyrillic letter, the Kelvin sign whose Unicode lower case is `k`) does.
SCHEMES = (b"api-token", b"token")


def _token(headers: Headers) -> str:
    """The key the request's headers send, or a 401 saying how to send one."""
    header = headers.get("authorization", "")
    if not header:
        raise ApiError(401, "missing Authorization header; send `Authorization: Api-Token <key>`")
    words = header.encode("latin-1").split()  # Starlette decodes header bytes as Latin-1: this undoes it
    if not words or words[0].lower() not in SCHEMES:
        raise ApiError(401, "Authorization must be `Api-Token <key>` or `Token <key>`")
    if len(words) != 2:
        raise ApiError(401, "Authorization must be `Api-Token <key>`: one key, without spaces")
    return words[1].decode("latin-1")


async def caller(request: Request, org: ORG, state: State) -> apikeys.ApiKey:
    key, exists = await apikeys.lookup_with_org(state.redis, _token(request.headers), org)  # one round trip
    if key is None:
        raise ApiError(401, "unknown or revoked API key")
    if not key.allows_org(org):
        raise ApiError(403, f"this key may not read org {org!r}")
    if not exists:
        raise ApiError(404, f"org {org!r} does not exist")
    return key


Caller = Annotated[apikeys.ApiKey, Depends(caller)]

PLATFORM_KEY = Annotated[
    str | None,
    Query(description="The org (tenant) whose analytics are read; default: the API key's own org.", max_length=128),
]


async def platform_org(request: Request, state: State, platform_key: PLATFORM_KEY = None) -> str:
    """The org of the calls that name it as a query parameter (`/api/analytics/...`), checked as `caller`
    checks the org of a path; without one, the key's own org (an all-orgs key must name one: a 400)."""
    if not platform_key:
        key = await apikeys.lookup(state.redis, _token(request.headers))
        if key is None:
            raise ApiError(401, "unknown or revoked API key")
        if key.org == apikeys.ALL_ORGS:
            raise ApiError(400, "platform_key is required with an all-orgs key", param="platform_key")
        platform_key = key.org
    await caller(request, platform_key, state)
    return platform_key


PlatformOrg = Annotated[str, Depends(platform_org)]


async def all_orgs_admin(request: Request, state: State) -> apikeys.ApiKey:
    """For the calls across orgs (no org in the path): an all-orgs platform_admin key."""
    key = await apikeys.lookup(state.redis, _token(request.headers))
    if key is None:
        raise ApiError(401, "unknown or revoked API key")
    if key.org != apikeys.ALL_ORGS or key.role != "platform_admin":
        raise ApiError(403, "this call needs an all-orgs platform_admin key")
    return key


AllOrgsAdmin = Annotated[apikeys.ApiKey, Depends(all_orgs_admin)]


def require_admin(key: apikeys.ApiKey, what: str = "chat history") -> None:
    if key.role != "platform_admin":
        raise ApiError(403, f"{what} needs a platform_admin key")
