"""The `ai-analytics` command: it wires streams, tables, agents, api and infra together; nothing imports it."""
