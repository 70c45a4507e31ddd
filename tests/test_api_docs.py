"""docs/api.md against the platform's SDK and the API's routes (no servers).

The operations are read from the installed SDK (`iblai` 4.202.2, `AiAnalyticsApi`): each public method's
generated `_<name>_serialize` names its HTTP method and path. The routes are the API's OpenAPI paths. The page
must list every operation once with the SDK's method and path, mark served exactly those the API routes, say
why for every other, and list the API's other routes under /api/ as its own.
"""

from __future__ import annotations

import inspect
import re
from collections import Counter
from pathlib import Path

from iblai.api.ai_analytics_api import AiAnalyticsApi

from api.app import create_app

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "api.md").read_text()
SERVED, COMPUTABLE, NOT = "**served**", "computable, not served yet", "not computable"
METHODS = "GET|POST|PUT|PATCH|DELETE"
OPERATION_ROW = re.compile(rf"^\| `(\w+)` \| ({METHODS}) \| `([^`]+)` \| ([^|]+) \| ([^|]+) \| (.*) \|$", re.M)
EXTRA_ROW = re.compile(rf"^\| `(/api/[^`]+)` \| ({METHODS}) \| (.+) \|$", re.M)


def sdk_operations() -> dict[str, tuple[str, str]]:
    """Each operation of the SDK: (HTTP method, path), as its generated request builder states them."""
    out = {}
    for name, _ in inspect.getmembers(AiAnalyticsApi, inspect.isfunction):
        if name.startswith("_") or name.endswith(("_with_http_info", "_without_preload_content")):
            continue
        builder = inspect.getsource(getattr(AiAnalyticsApi, f"_{name}_serialize"))
        found = re.search(r"method='(\w+)',\s*resource_path='([^']+)'", builder)
        assert found, f"{name}: the SDK's request builder no longer names its method and path this way"
        out[name] = (found.group(1), found.group(2))
    return out


def shape(path: str) -> str:
    """A path with its parameters unnamed: `chat-history/{id}/` and `chat-history/{conversation_id}/` agree."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def routes() -> set[tuple[str, str]]:
    paths = create_app().openapi()["paths"]
    return {(method.upper(), shape(path)) for path, ops in paths.items() for method in ops}


def documented() -> dict[str, tuple[str, str, str, str]]:
    rows = OPERATION_ROW.findall(DOC)
    twice = [name for name, n in Counter(name for name, *_ in rows).items() if n > 1]
    assert not twice, f"listed more than once in docs/api.md: {twice}"
    return {name: (method, path, status.strip(), why.strip()) for name, method, path, _, status, why in rows}


def test_every_operation_of_the_sdk_is_listed_once_with_its_method_and_path() -> None:
    sdk, doc = sdk_operations(), documented()
    assert len(sdk) == 213  # iblai 4.202.2; a new SDK is a reason to read this page again
    assert sorted(set(sdk) - set(doc)) == [], "operations of the SDK missing from docs/api.md"
    assert sorted(set(doc) - set(sdk)) == [], "docs/api.md lists operations the SDK does not have"
    wrong = {name: (doc[name][:2], sdk[name]) for name in sdk if doc[name][:2] != sdk[name]}
    assert wrong == {}, "method or path not the SDK's: (docs/api.md, SDK)"


def test_served_is_marked_exactly_where_the_api_routes_the_operation() -> None:
    routed, doc = routes(), documented()
    served = {name for name, (method, path) in sdk_operations().items() if (method, shape(path)) in routed}
    marked = {name for name, (_, _, status, _) in doc.items() if status == SERVED}
    assert sorted(marked - served) == [], "marked served in docs/api.md, but the API does not route them"
    assert sorted(served - marked) == [], "the API routes them, but docs/api.md does not mark them served"


def test_every_other_operation_says_why_and_the_counts_are_the_pages() -> None:
    doc = documented()
    statuses = Counter(status for _, _, status, _ in doc.values())
    assert set(statuses) <= {SERVED, COMPUTABLE, NOT}, f"unknown marks: {set(statuses) - {SERVED, COMPUTABLE, NOT}}"
    assert [name for name, (_, _, _, why) in doc.items() if len(why) < 5] == [], "rows without a reason"
    for mark in (SERVED, COMPUTABLE, NOT):
        bullet = re.search(rf"^- \*\*{re.escape(mark.strip('*'))}\*\*:(.*?)(?=^- |^$)", DOC, re.M | re.S)
        assert bullet, f"the introduction has no bullet for {mark}"
        n = statuses[mark]
        assert f" {n} operation{'s' if n != 1 else ''}" in " ".join(bullet.group(1).split()), (mark, n)
    assert f"offers {len(doc)} operations" in " ".join(DOC.split())


def test_the_routes_the_sdk_does_not_have_are_listed_as_our_own() -> None:
    sdk = {(method, shape(path)) for method, path in sdk_operations().values()}
    ours = {route for route in routes() if route[1].startswith("/api/") and route not in sdk}
    listed = {(method, shape(path)) for path, method, _ in EXTRA_ROW.findall(DOC)}
    assert listed == ours, f"routes not in the SDK: listed {sorted(listed - ours)}, unlisted {sorted(ours - listed)}"
