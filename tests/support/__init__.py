"""Helpers the tests share: settings, servers, uploads, files, processes."""
