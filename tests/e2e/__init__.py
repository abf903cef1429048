"""The service as a user runs it: processes, the CLI, the README and the dashboard."""
