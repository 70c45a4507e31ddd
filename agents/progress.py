"""Which offsets of a partition are applied, for an engine that is not trusted to deliver them in order.

Redis's progress for a partition (`keys.progress`) may only name an offset below which *every* record is
applied. An engine that hands over records with gaps (Faust did, around rebalances) or out of order has
its applied offsets collected here; the progress advances only over contiguous ones, and what is missing
below the highest applied offset (or below where the engine's committed offset says it will start) is a
gap the worker fetches again directly. Pure: no broker, no Redis.
"""

from __future__ import annotations

from collections.abc import Iterable


def runs(offsets: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, merged [first, end) runs of the offsets (duplicates allowed)."""
    out: list[tuple[int, int]] = []
    for offset in sorted(set(offsets)):
        if out and out[-1][1] == offset:
            out[-1] = (out[-1][0], offset + 1)
        else:
            out.append((offset, offset + 1))
    return out


class PartitionProgress:
    """Applied offsets of one partition. `next` is the first offset not known to be applied (None until
    the worker has read where Redis's progress stands); applied runs above it wait there until the gap
    below them is filled."""

    def __init__(self, next_offset: int | None = None) -> None:
        self.next = next_offset
        self._above: list[tuple[int, int]] = []  # sorted, disjoint [first, end) runs
        self._expected_end = 0  # offsets below this exist (the engine said it starts there, or delivered)

    def start_at(self, next_offset: int) -> None:
        """Where the progress stands (from Redis); runs already collected are kept."""
        self.next = next_offset
        self._settle()

    def expect(self, end: int) -> None:
        """Every offset below `end` exists (e.g. the engine's committed offset): a gap if not applied."""
        self._expected_end = max(self._expected_end, end)

    def add(self, offsets: Iterable[int]) -> None:
        """Mark offsets applied (or known not to hold an event: transaction markers, compacted away)."""
        for first, end in runs(offsets):
            self._expected_end = max(self._expected_end, end)
            self._above.append((first, end))
        self._above.sort()
        merged: list[tuple[int, int]] = []
        for first, end in self._above:
            if merged and first <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((first, end))
        self._above = merged
        self._settle()

    def gaps(self) -> list[tuple[int, int]]:
        """[first, end) ranges below the highest known offset that are not applied."""
        if self.next is None:
            return []
        out = []
        cursor = self.next
        for first, end in self._above:
            if first > cursor:
                out.append((cursor, first))
            cursor = max(cursor, end)
        if self._expected_end > cursor:
            out.append((cursor, self._expected_end))
        return out

    def _settle(self) -> None:
        if self.next is None:
            return
        while self._above and self._above[0][0] <= self.next:
            self.next = max(self.next, self._above.pop(0)[1])
