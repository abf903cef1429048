"""Shared plumbing: Redis, artifact files, streams and stores. Imports the core, never the apps."""
