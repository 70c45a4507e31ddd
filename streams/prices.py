"""The model price table: regex on the model name -> USD per million input/output tokens.

Cost is inferred at ingestion when an observation carries none. Amounts are integer nano-dollars.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path

from streams.exceptions import SettingsError

DEFAULT_TABLE = Path(__file__).with_name("prices.toml")
# USD per million tokens -> nano-dollars per token is a factor of 1e9 / 1e6.
NANOS_PER_USD_PER_MTOK = Decimal(1000)


@dataclass(frozen=True)
class Price:
    pattern: re.Pattern[str]
    input_nanos_per_token: Decimal
    output_nanos_per_token: Decimal


class PriceTable:
    def __init__(self, prices: list[Price]) -> None:
        self.prices = prices

    @classmethod
    def load(cls, override: Path | None = None) -> PriceTable:
        prices = _read(override) if override is not None else []
        return cls(prices + _read(DEFAULT_TABLE))

    def cost_nanos(self, model: str, input_tokens: int, output_tokens: int) -> int | None:
        """Nano-dollars for that usage, or None when no entry matches the model."""
        price = self._lookup(model)
        if price is None:
            return None
        total = price.input_nanos_per_token * input_tokens + price.output_nanos_per_token * output_tokens
        return int(total.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))

    @lru_cache(maxsize=1024)  # noqa: B019 - tables live as long as the worker
    def _lookup(self, model: str) -> Price | None:
        for price in self.prices:
            if price.pattern.search(model):
                return price
        return None


def _read(path: Path) -> list[Price]:
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"price table {path}: {exc}") from None
    out = []
    for i, entry in enumerate(doc.get("model", [])):
        try:
            out.append(
                Price(
                    pattern=re.compile(entry["match"], re.IGNORECASE),
                    input_nanos_per_token=Decimal(str(entry["input"])) * NANOS_PER_USD_PER_MTOK,
                    output_nanos_per_token=Decimal(str(entry["output"])) * NANOS_PER_USD_PER_MTOK,
                )
            )
        except (KeyError, re.error, InvalidOperation, TypeError) as exc:
            raise SettingsError(f"price table {path}, model entry {i + 1}: {exc!r}") from None
    return out
