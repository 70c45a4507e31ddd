"""`ai-analytics`: worker, api, stack, topics, keys, orgs, erase, rebuild, produce, alerts."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from cli import admin, alerts, produce, rebuild
from infra.exceptions import InfraError
from streams.exceptions import SettingsError
from streams.settings import ENGINES, Settings, get_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ai-analytics", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="run a worker; several share the partitions")
    worker.add_argument("-l", "--loglevel", default=None, help="debug, info (default: AIA_LOG_LEVEL), warning")
    worker.add_argument(
        "--engine",
        choices=ENGINES,
        default=None,
        help="faust (Faust agents) or kafka (an aiokafka loop); default AIA_ENGINE",
    )
    sub.add_parser("api", help="serve the API and the dashboard (AIA_API_HOST:AIA_API_PORT)")
    stack = sub.add_parser("stack", help="the local stack: Kafka, Redis, worker, API, demo traffic")
    stack_sub = stack.add_subparsers(dest="action", required=True)
    up = stack_sub.add_parser("up", help="start everything in the foreground; Ctrl-C stops it")
    up.add_argument("--no-demo", action="store_true", help="do not start the demo producer")
    up.add_argument("--no-api", action="store_true", help="do not start the API")
    up.add_argument(
        "--cluster",
        action="store_true",
        help="three Kafka brokers and a Redis Cluster (three primaries, two replicas each), two workers",
    )
    stack_sub.add_parser("down", help="stop a stack started by `stack up`")
    stack_sub.add_parser("status", help="which parts answer on their ports")
    sub.add_parser("topics", help="create the contract's topics on the configured broker (idempotent)")
    admin.add_arguments(sub)
    rebuild.add_arguments(sub)
    produce.add_arguments(sub)
    alerts.add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        sys.exit(run(args, get_settings()))
    except SettingsError as exc:  # a bad environment variable, price table or rules file
        parser.exit(2, f"ai-analytics: {exc}\n")
    except InfraError as exc:
        parser.exit(1, f"ai-analytics: {exc}\n")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "worker":
        return _worker(settings, args.engine or settings.engine, args.loglevel or settings.log_level)
    if args.command == "api":
        return _api(settings)
    if args.command == "stack":
        from infra import stack

        if args.action == "up":
            return stack.up(settings, demo=not args.no_demo, api=not args.no_api, cluster=args.cluster)
        if args.action == "down":
            return stack.down()
        return stack.status(settings)
    if args.command == "topics":
        from streams.clients import ensure_topics

        created = asyncio.run(ensure_topics(settings))
        print(f"created: {', '.join(created) if created else 'none (all present)'}")
        return 0
    if args.command in ("keys", "orgs", "erase"):
        return asyncio.run(admin.run(args, settings))
    if args.command == "rebuild":
        return rebuild.run(args, settings)
    if args.command == "produce":
        return produce.run(args, settings)
    if args.command == "alerts":
        return alerts.run(args, settings)
    return 2


def configure_logging(level: str) -> None:
    level = level.upper()
    logging.basicConfig(level=level, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(max(logging.getLevelName(level), logging.WARNING))


def _worker(settings: Settings, engine: str, loglevel: str) -> int:
    from agents.rules import RuleSet
    from streams.prices import PriceTable

    # A bad rules file or price table stops the worker here with the reason (exit 2), before any engine.
    RuleSet.load(settings.alert_rules)
    PriceTable.load(settings.price_table)
    if engine == "faust":
        import faust

        from agents.faust.app import app

        # Faust's worker configures logging, handles signals and runs the agents found in agents/.
        faust.Worker(app, loglevel=loglevel.upper(), loop=None).execute_from_commandline()
        return 0
    import uvloop

    from agents.worker import serve

    configure_logging(loglevel)
    uvloop.run(serve(settings))
    return 0


def _api(settings: Settings) -> int:
    import os

    import uvicorn

    processes = settings.api_processes or os.cpu_count() or 1
    if processes == 1:
        from api.app import create_app

        uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, log_level="warning")
        return 0
    # Several processes on one port: each builds its app from the environment (AIA_*), so it gets these settings.
    os.environ.update(settings.as_env())
    uvicorn.run("api.app:create_app", factory=True, workers=processes, host=settings.api_host,
                port=settings.api_port, log_level="warning")  # fmt: skip
    return 0
