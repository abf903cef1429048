"""Tests of the algorithm core, `mas/`."""
