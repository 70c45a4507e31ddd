"""What is kept and how it is read back: Redis keys, buckets, the atomic batch writer, queries."""
