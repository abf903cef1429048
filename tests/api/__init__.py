"""Tests of the HTTP API, `service/`, against a real server."""
