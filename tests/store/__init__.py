"""Tests of the Redis and file plumbing, `mas_stream/store/`."""
