"""`ai-analytics alerts tail|forward`: print alerts as they come, or POST each to a webhook with retries."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

from agents.forwarder import Forwarder, tail
from streams.settings import Settings


def add_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    alerts = sub.add_parser("alerts", help="alerts: print them as they come, or forward them to a webhook")
    kinds = alerts.add_subparsers(dest="action", required=True)
    t = kinds.add_parser("tail", help="print alerts as they come (Ctrl-C stops)")
    t.add_argument("--from-beginning", action="store_true", help="print the topic's earlier alerts first")
    t.add_argument("--json", action="store_true", help="print each alert as its JSON record")
    t.add_argument("--count", type=int, default=0, help="exit after this many alerts (0: run until stopped)")
    fwd = kinds.add_parser("forward", help="POST each alert to a webhook, with retries")
    fwd.add_argument("--url", required=True, help="the webhook URL")
    fwd.add_argument("--group", default="", help="consumer group (default: <AIA_APP_ID>-alert-forwarder)")
    fwd.add_argument(
        "--start", choices=("latest", "earliest"), default="latest", help="where a new group starts (default: latest)"
    )
    fwd.add_argument("--timeout", type=float, default=10.0, help="seconds per POST")
    fwd.add_argument("--max-backoff", type=float, default=30.0, help="longest wait between retries, seconds")
    fwd.add_argument("--header", action="append", default=[], help="extra header 'Name: value' (repeatable)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    logging.basicConfig(level=settings.log_level.upper(), format="[%(asctime)s] %(levelname)s %(message)s")
    if args.action == "tail":
        return asyncio.run(until_signal(lambda stop: tail(settings, args.from_beginning, args.json, args.count, stop)))
    headers = {}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            print(f"ai-analytics: --header {h!r} is not 'Name: value'", file=sys.stderr)
            return 2
        headers[name.strip()] = value.strip()
    forwarder = Forwarder(
        settings,
        args.url,
        group=args.group or f"{settings.app_id}-alert-forwarder",
        start=args.start,
        timeout=args.timeout,
        max_backoff=args.max_backoff,
        headers=headers,
    )
    return asyncio.run(until_signal(forwarder.run))


async def until_signal(run: Callable[[asyncio.Event], Awaitable[int | None]]) -> int:
    """Run until done or until SIGTERM/SIGINT sets the stop event it is handed; its exit code (or 0)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await run(stop) or 0
