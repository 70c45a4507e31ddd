"""Chat history: the conversations as the platform lists them, newest first, filtered by student, mentor,
topic or sentiment.

Rules (docs/semantics.md): a conversation's record is its **latest chat-history record** by (event time,
offset, event_id), its sentiment the latest judgement by the same order, its topics those of the record and
of every message. Where it is listed is a function of its final state (`ConversationState.index_entries`),
so the index changes by the difference between the state before the batch and after it.
"""

from __future__ import annotations

import orjson

from tables import keys
from tables.aggregates.base import Batch, Counted
from tables.conversations import ConversationState, conversation_digest, is_newer


class ChatHistory:
    name = "chat_history"

    def fold(self, b: Batch, counted: Counted) -> None:
        for ev, conv in counted.messages:
            if ev.topics and not conv.msg_topics.issuperset(ev.topics):
                conv.msg_topics = conv.msg_topics.union(ev.topics)
        for sv, conv in counted.sentiments:
            version = (sv.ts_ms, sv.src_offset, sv.event_id)
            if is_newer(version, conv.sentiment_version):
                conv.sentiment, conv.sentiment_version = sv.sentiment, version
        for rec, conv in counted.records:
            version = (rec.ts_ms, rec.src_offset, rec.event_id)
            if is_newer(version, conv.record_version):
                conv.record_version = version
                conv.student, conv.mentor, conv.topics = rec.student, b.mentor(rec.mentor), rec.topics
                conv.inserted_ms = rec.inserted_at_ms
                conv.deleted = rec.deleted
                conv.record_json = orjson.dumps(rec.record).decode()

    def changed(self, b: Batch, sums: None, cid: str, before: ConversationState, after: ConversationState) -> None:
        """The index entries the conversation leaves and the ones it gains."""
        if before.listing() == after.listing():
            return
        w, gen, org = b.w, b.gen, b.org
        digest = conversation_digest(org, cid)
        old, new = before.index_entries(), after.index_entries()
        member = str(digest)
        for kind, value in old.keys() - new.keys():
            if kind:
                w.srem(keys.conversations_by(gen, org, kind, value, digest), member)
            else:
                w.zrem(keys.conversations(gen, org), member)
        for (kind, value), score in new.items():
            if (kind, value) in old and (kind or old[(kind, value)] == score):
                continue
            if kind:
                w.sadd(keys.conversations_by(gen, org, kind, value, digest), member)
            else:
                w.zadd(keys.conversations(gen, org), member, score)

    def flush(self, b: Batch, sums: None) -> None:
        return
