"""The aggregate families, one module each: what a family takes from the events, its order-free rule, its
keys and stored encoding, its write, and the reads the API makes of it. The planner (agents/planner.py)
is a loop over `FAMILIES`; tables/aggregates/base.py says how. Adding one: docs/architecture.md,
"Adding an aggregate"."""

from __future__ import annotations

from typing import Any

from tables.aggregates.base import Family
from tables.aggregates.chat_history import ChatHistory
from tables.aggregates.distinct_students import DistinctStudents
from tables.aggregates.first_seen import FirstSeen
from tables.aggregates.llm_cost import LlmCost
from tables.aggregates.ratings import Ratings
from tables.aggregates.sentiment import Sentiment
from tables.aggregates.sessions import Sessions
from tables.aggregates.student_activity import StudentActivity
from tables.aggregates.top_students import TopStudents
from tables.aggregates.topics import Topics
from tables.aggregates.transcripts import Transcripts

# Every family, in the order the planner calls them (any order gives the same writes).
FAMILIES: tuple[Family[Any], ...] = (
    Sessions(),
    ChatHistory(),
    Sentiment(),
    LlmCost(),
    TopStudents(),
    DistinctStudents(),
    Ratings(),
    Topics(),
    FirstSeen(),
    Transcripts(),
    StudentActivity(),
)
