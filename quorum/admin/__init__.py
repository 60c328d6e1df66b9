"""The REST admin API (FastAPI) under /api/v1."""
