"""What is served: the analytics API and the dashboard."""
