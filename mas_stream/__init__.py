"""The `mas-stream` command: one entry point for the service, its workers and the benchmark."""
