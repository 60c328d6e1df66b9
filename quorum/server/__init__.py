"""The server: federation service, sessions, the run queue (coordinator), the task book, the
round services and drivers, state store, checkpoints."""
