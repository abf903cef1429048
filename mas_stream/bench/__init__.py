"""Continual-learning benchmark: fixed suites, a runner, plots and the `mas-stream bench` command.

Submodules are imported where they are needed, so the service can use
`mas_stream.bench.suites` without loading matplotlib.
"""
