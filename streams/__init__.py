"""What comes in: the Faust app, settings, topics, event schemas, codec and producer client."""
