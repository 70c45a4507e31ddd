"""What happens to the events: validation, dead letters, and the batch pipeline that applies aggregates."""
