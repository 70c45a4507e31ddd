"""`ai-analytics rebuild`: recompute every aggregate from the retained topics (agents/rebuild.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from streams.settings import Settings
from tables import connections


def add_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "rebuild",
        help="recompute every aggregate from the topics into a new generation while the current one serves; "
        "switch when done (run it again to resume an interrupted one)",
    )
    p.add_argument("--rate", type=float, default=None, help="records per second at most (spare Redis); default: all")
    p.add_argument("--grace", type=float, default=10.0, help="seconds between the switch and dropping the old one")
    p.add_argument("--status", action="store_true", help="print the rebuild under way, if any, and exit")


def run(args: argparse.Namespace, settings: Settings) -> int:
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    return asyncio.run(_run(args, settings))


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    from agents.rebuild import Rebuild, RebuildRefused
    from tables.generations import Generations, status

    redis = connections.connect(settings.redis_url)
    try:
        if args.status:
            gens = await Generations.read(redis)
            under_way = await status(redis)
            print(f"serving generation {gens.current}")
            if under_way is not None:
                print(f"building generation {under_way.generation}: {under_way.remaining():,} records left")
            return 0
        try:
            return await Rebuild(settings, redis, rate=args.rate, grace_s=args.grace,
                                 say=lambda line: print(line, flush=True)).run()  # fmt: skip
        except RebuildRefused as exc:
            print(f"ai-analytics: {exc}", file=sys.stderr)
            return 2
    finally:
        await redis.aclose()
