"""How conversation and mentor ids are kept and served: as UUIDs, as the platform's clients expect.

The platform's conversation ids and mentor ids (`mentor_unique_id`) are UUIDs, and its SDK refuses
anything else. An id that is a UUID in any spelling (upper case, without hyphens) is kept in its canonical
form, so one conversation or mentor has one key. An id that is not a UUID (a slug, a number) is kept as
it is and served as a name-based UUID of (org, kind, id), stable forever, so a client can filter or fetch
by the UUID it was shown (a version-5 UUID too: name-based UUIDs are version 5, and no served id may be
another id's, `served`): a conversation is addressed by a digest of its served UUID (tables/conversations
.py), and `aia:{org}:uuids` maps a mentor's served UUID back to its id.
"""

from __future__ import annotations

import hashlib
import uuid
from functools import lru_cache

# The namespace of the name-based UUIDs (a fixed, random UUID: changing it changes every served id).
NAMESPACE = uuid.UUID("5b1f0e7c-9a44-4f2e-8c1d-2f6a7b9c0d3e")
CONVERSATION = "conv"
MENTOR = "mentor"


@lru_cache(maxsize=65536)  # the planner asks for every event; ids repeat within and across batches
def canonical(value: str) -> str | None:
    """The canonical spelling of a UUID (`8d7f2c1e-3b4a-...`), or None when the value is not one."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def uuid_bytes(value: str) -> bytes | None:
    """The 16 bytes of a UUID in its canonical spelling (another spelling is another value), else None."""
    return uuid.UUID(value).bytes if len(value) == 36 and canonical(value) == value else None


def normalize(value: str) -> str:
    """How an id is kept: canonical when it is a UUID, else as given."""
    return canonical(value) or value


def served_as_itself(uid: str | None) -> bool:
    """True for a canonical UUID that is served as it is: any but a version-5 (name-based) one, the only
    kind `name_uuid` makes."""
    return uid is not None and uid[14] != "5"


@lru_cache(maxsize=65536)  # asked for every event; a conversation's events come together
def served(org: str, kind: str, value: str) -> str:
    """The UUID under which a kept id is served: a UUID is served as itself, unless it is a version-5 one;
    anything else (a slug, a number, a version-5 UUID) as the name-based UUID of (org, kind, id).

    Injective: a name-based UUID is version 5, so it never equals an id served as itself, and two different
    ids name two different strings (an org has no `|`; a slug is not a UUID, a version-5 UUID is named by
    its canonical spelling), whose UUIDs differ but for a SHA-1 collision. So a producer sending another
    conversation's or mentor's served UUID as an id of its own gets a conversation or mentor of its own."""
    uid = canonical(value)
    if served_as_itself(uid):
        return uid  # type: ignore[return-value]
    return name_uuid(f"{org}|{kind}|{uid or value}")


_NAMESPACE_BYTES = NAMESPACE.bytes


def name_uuid(name: str) -> str:
    """`str(uuid.uuid5(NAMESPACE, name))`, in a third of its time (one per new conversation)."""
    h = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode()).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50  # version 5
    h[8] = (h[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def needs_mapping(value: str) -> bool:
    """True when the served UUID differs from the kept id (the id is not a UUID, or a version-5 one)."""
    return not served_as_itself(canonical(value))


def mapping_value(kind: str, value: str) -> str:
    """What `aia:{org}:uuids` holds for a mentor's served UUID: `kind|id`."""
    return f"{kind}|{value}"
