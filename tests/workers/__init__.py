"""Tests of the importance worker and the trainer, `worker/`."""
