"""What comes in: settings, topic names, event schemas and their validation, Kafka clients, the producer
client, the price table and demo traffic."""
