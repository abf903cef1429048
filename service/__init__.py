"""The HTTP API: predictions (own JSON and Open Inference Protocol v2), task intake, admin."""
