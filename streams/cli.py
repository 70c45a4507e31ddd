"""The `ai-analytics` command: worker, stack, topics, produce (more subcommands join as they exist)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from streams.exceptions import SettingsError
from streams.settings import Settings, get_settings


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        _worker(argv)
        return
    parser = argparse.ArgumentParser(prog="ai-analytics", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="run a worker (-l LEVEL sets the log level); several share the partitions")
    stack = sub.add_parser("stack", help="the local stack: Kafka, Redis, worker, API, demo traffic")
    stack_sub = stack.add_subparsers(dest="action", required=True)
    up = stack_sub.add_parser("up", help="start everything in the foreground; Ctrl-C stops it")
    up.add_argument("--no-demo", action="store_true", help="do not start the demo producer")
    up.add_argument("--no-api", action="store_true", help="do not start the API")
    stack_sub.add_parser("down", help="stop a stack started by `stack up`")
    stack_sub.add_parser("status", help="which parts answer on their ports")
    sub.add_parser("topics", help="create the contract's topics on the configured broker (idempotent)")
    sub.add_parser("api", help="serve the API and the dashboard (AIA_API_HOST:AIA_API_PORT)")
    keys_p = sub.add_parser("keys", help="API keys: create, list, revoke")
    keys_sub = keys_p.add_subparsers(dest="action", required=True)
    create = keys_sub.add_parser("create", help="create a key; its secret is printed once")
    create.add_argument("--org", required=True, help="the org it may read, or '*' for all orgs")
    create.add_argument("--role", required=True, choices=("analyst", "platform_admin"))
    create.add_argument("--name", default="", help="a note to recognise the key by")
    keys_sub.add_parser("list", help="list keys (never their secrets)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id")
    orgs_p = sub.add_parser("orgs", help="orgs: register one before its first event, or list them")
    orgs_sub = orgs_p.add_subparsers(dest="action", required=True)
    reg = orgs_sub.add_parser("register", help="make an org exist (its reads answer 200 with zeros)")
    reg.add_argument("org")
    orgs_sub.add_parser("list", help="list the orgs that exist")
    _add_produce(sub)
    from streams.alert_consumers import add_arguments as add_alerts

    add_alerts(sub)
    args = parser.parse_args(argv)
    try:
        sys.exit(_run(args))
    except SettingsError as exc:
        parser.exit(2, f"ai-analytics: {exc}\n")


def _run(args: argparse.Namespace) -> int:
    from infra.exceptions import InfraError

    settings = get_settings()
    try:
        if args.command == "stack":
            from infra import stack

            if args.action == "up":
                return stack.up(settings, demo=not args.no_demo, api=not args.no_api)
            if args.action == "down":
                return stack.down()
            return stack.status(settings)
        if args.command == "topics":
            from streams.admin import ensure_topics

            created = asyncio.run(ensure_topics(settings))
            print(f"created: {', '.join(created) if created else 'none (all present)'}")
            return 0
        if args.command == "api":
            from api.__main__ import main as serve

            serve()
            return 0
        if args.command in ("keys", "orgs"):
            return asyncio.run(_admin(args, settings))
        if args.command == "alerts":
            from streams.alert_consumers import run_alerts

            return run_alerts(args, settings)
        if args.command == "produce":
            from streams.produce_cli import run_produce

            return run_produce(args, settings)
    except InfraError as exc:
        print(f"ai-analytics: {exc}", file=sys.stderr)
        return 1
    return 2


async def _admin(args: argparse.Namespace, settings: Settings) -> int:
    from redis.asyncio import Redis

    from streams.schemas import ORG_RE
    from tables import apikeys, keys, queries

    redis = Redis.from_url(settings.redis_url)
    try:
        if args.command == "orgs":
            if args.action == "register":
                if not ORG_RE.match(args.org):
                    print("ai-analytics: an org is 1-128 letters, digits, '.', '_', '@' or '-'", file=sys.stderr)
                    return 2
                await queries.register_org(redis, args.org)
                print(f"registered {args.org}")
            else:
                members: Any = await redis.smembers(keys.orgs())
                for org in sorted(m.decode() for m in members):
                    print(org)
            return 0
        if args.action == "create":
            if args.org != apikeys.ALL_ORGS and not ORG_RE.match(args.org):
                print("ai-analytics: --org is an org name or '*'", file=sys.stderr)
                return 2
            token, record = await apikeys.create(redis, args.org, args.role, args.name)
            print(token)
            print(
                f"(key {record.id}: org {record.org}, role {record.role}; shown once, stored hashed)", file=sys.stderr
            )
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
    finally:
        await redis.aclose()


def _add_produce(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    try:
        from streams.produce_cli import add_arguments
    except ImportError:
        return
    add_arguments(sub)


def _worker(argv: list[str]) -> None:
    import logging

    from agents.worker import serve

    parser = argparse.ArgumentParser(prog="ai-analytics worker", description="apply the input topics to Redis")
    parser.add_argument("-l", "--loglevel", default=None, help="debug, info (default: AIA_LOG_LEVEL), warning")
    args = parser.parse_args(argv[1:])
    try:
        settings = get_settings()
    except SettingsError as exc:
        parser.exit(2, f"ai-analytics: {exc}\n")
    level = (args.loglevel or settings.log_level).upper()
    logging.basicConfig(level=level, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(max(logging.getLevelName(level), logging.WARNING))
    import uvloop

    try:
        uvloop.run(serve(settings))
    except SettingsError as exc:  # a bad rules file, for example
        parser.exit(2, f"ai-analytics: {exc}\n")


if __name__ == "__main__":
    main()
