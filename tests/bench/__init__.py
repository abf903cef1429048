"""Tests of the benchmark, `mas_stream/bench/`."""
