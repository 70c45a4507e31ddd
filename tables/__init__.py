"""What is kept and how it is read back: Redis keys, buckets, the aggregate families (tables/aggregates/),
the atomic batch writer, the shared reads."""
