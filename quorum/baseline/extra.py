"""The optional `llm` extra: which engines need it, and the message when it is missing.

Torch-free, so that the CLI and the server can refuse a job before starting any process.
"""

from __future__ import annotations

import importlib.util

from quorum.errors import BaselineError

LLM_EXTRA_HINT = "pip install 'quorum-fl[llm]'"
_ENGINE_PACKAGES = {"deepspeed": ("deepspeed",), "megatron": ("megatron.core",)}
_DISTRIBUTIONS = {"deepspeed": "deepspeed", "megatron.core": "megatron-core"}


def missing_packages(engine: str) -> list[str]:
    """The distributions `engine` needs that cannot be imported here."""
    missing = []
    for name in _ENGINE_PACKAGES.get(engine, ()):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ModuleNotFoundError, ValueError):  # a parent package is missing, or a stub
            found = False
        if not found:
            missing.append(_DISTRIBUTIONS[name])
    return missing


def require_llm_extra(engine: str) -> None:
    """BaselineError naming the extra when `engine` needs a package that is not installed."""
    missing = missing_packages(engine)
    if missing:
        raise BaselineError(
            f"engine {engine!r} needs {' and '.join(missing)}, which is not installed: "
            f"{LLM_EXTRA_HINT} (with DS_BUILD_OPS=0 where DeepSpeed's ops cannot be built)"
        )
