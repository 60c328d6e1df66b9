"""Runnable example tasks; each is named by a run as `examples.<name>.task:task`."""
