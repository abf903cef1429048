"""One router per resource; `service.app` mounts them all."""
