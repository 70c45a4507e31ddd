"""Local infrastructure: fetching and running Apache Kafka and redis-server on loopback.

Used by the `ai-analytics stack` command and by the test fixtures, so the
dev stack and the tests start the same real components the same way.
"""
