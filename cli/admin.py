"""`ai-analytics keys ...`, `ai-analytics orgs ...` and `ai-analytics erase ...`: API keys, orgs and erasing a
student, kept in Redis."""

from __future__ import annotations

import argparse
import os
import sys

from redis.asyncio import Redis

from streams import clients
from streams.schemas import ORG_RE
from streams.settings import Settings
from tables import apikeys, buckets, connections, erase, queries
from tables.exceptions import QueryError


def add_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys_p = sub.add_parser("keys", help="API keys: create, list, revoke")
    keys_sub = keys_p.add_subparsers(dest="action", required=True)
    create = keys_sub.add_parser("create", help="create a key; its secret is printed once")
    create.add_argument("--org", required=True, help="the org it may read, or '*' for all orgs")
    create.add_argument("--role", required=True, choices=apikeys.ROLES)
    create.add_argument("--name", default="", help="a note to recognise the key by")
    keys_sub.add_parser("list", help="list keys (never their secrets)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id")
    orgs_p = sub.add_parser("orgs", help="orgs: register one before its first event, set its time zone, or list them")
    orgs_sub = orgs_p.add_subparsers(dest="action", required=True)
    reg = orgs_sub.add_parser("register", help="make an org exist (its reads answer 200 with zeros)")
    reg.add_argument("org")
    orgs_sub.add_parser("list", help="list the orgs that exist, with their time zones")
    tz = orgs_sub.add_parser(
        "tz",
        help="set an org's time zone: its days in average-messages, sentiment-count, top-students and the dashboard",
    )
    tz.add_argument("org")
    tz.add_argument("zone", help="an IANA name such as America/Los_Angeles, or UTC (the default)")
    erase_p = sub.add_parser(
        "erase", help="erase a student from an org: their records and counts, and every later event of theirs"
    )
    erase_p.add_argument("--org", required=True)
    erase_p.add_argument("--student", required=True, help="the username the events name")
    erase_p.add_argument("--by", default=os.environ.get("USER", "cli"), help="who asks (the audit record's `by`)")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    redis = connections.connect(settings.redis_url)
    try:
        if args.command == "orgs":
            return await _orgs(redis, args)
        if args.command == "erase":
            return await _erase(redis, settings, args)
        return await _keys(redis, args)
    finally:
        await redis.aclose()


async def _orgs(redis: Redis, args: argparse.Namespace) -> int:
    if args.action == "register":
        if not ORG_RE.match(args.org):
            print("ai-analytics: an org is 1-128 letters, digits, '.', '_', '@' or '-'", file=sys.stderr)
            return 2
        await queries.register_org(redis, args.org)
        print(f"registered {args.org}")
        return 0
    if args.action == "tz":
        if not ORG_RE.match(args.org):
            print("ai-analytics: an org is 1-128 letters, digits, '.', '_', '@' or '-'", file=sys.stderr)
            return 2
        try:
            zone = buckets.time_zone(args.zone)
        except QueryError as e:
            print(f"ai-analytics: {e.message}", file=sys.stderr)
            return 2
        await queries.register_org(redis, args.org)
        await queries.set_org_time_zone(redis, args.org, None if zone is None else zone.key)
        print(f"{args.org}: days are {'UTC' if zone is None else zone.key} days")
        return 0
    for org in await queries.list_orgs(redis):
        print(f"{org}\t{await queries.org_time_zone(redis, org) or 'UTC'}")
    return 0


async def _keys(redis: Redis, args: argparse.Namespace) -> int:
    if args.action == "create":
        if args.org != apikeys.ALL_ORGS and not ORG_RE.match(args.org):
            print("ai-analytics: --org is an org name or '*'", file=sys.stderr)
            return 2
        token, record = await apikeys.create(redis, args.org, args.role, args.name)
        print(token)
        print(f"(key {record.id}: org {record.org}, role {record.role}; shown once, stored hashed)", file=sys.stderr)
        return 0
    if args.action == "list":
        for k in await apikeys.list_keys(redis):
            print(f"{k.id}\torg={k.org}\trole={k.role}\tcreated_at={k.created_at}\t{k.name}")
        return 0
    if await apikeys.revoke(redis, args.id):
        print(f"revoked {args.id}")
        return 0
    print(f"ai-analytics: no key with id {args.id}", file=sys.stderr)
    return 1


async def _erase(redis: Redis, settings: Settings, args: argparse.Namespace) -> int:
    """Erase, then send the audit record and the changed top-students sets (acknowledged before exit 0)."""
    if not ORG_RE.match(args.org) or not args.student:
        print("ai-analytics: --org is an org name and --student a username", file=sys.stderr)
        return 2
    erasure = await erase.erase_waiting(redis, settings, args.org, args.student, by=f"cli:{args.by}")
    producer = clients.producer(settings.kafka_bootstrap, client_id=f"{settings.app_id}-erase")
    await producer.start()
    try:
        for topic, key, value in await erase.publications(redis, erasure):
            await producer.send_and_wait(settings.topic(topic), value, key=key)
    finally:
        await producer.stop()
    what = ", ".join(f"{name} {n}" for name, n in erasure.audit()["what"].items())
    print(f"erased from {args.org}: {what}; later events of theirs are dropped (tombstone {erasure.tombstone})")
    return 0
