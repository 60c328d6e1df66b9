"""The server: federation service, sessions, coordinator and drivers, state store, checkpoints."""
