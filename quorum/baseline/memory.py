"""What a rank holds: the bytes of its training state, and its peak memory.

`state_bytes(*roots)` counts the tensors reachable from the given objects (the model or engine,
the optimiser): parameters, their gradients, the optimiser's state and any flat buffers or
partitions an engine keeps (DeepSpeed's fp32 master partitions, its flat parameter groups, a
stage-3 parameter's `ds_tensor`). Storage is counted once however many views point into it (a
DeepSpeed model parameter is a view of a flat group; a DDP gradient, with
`gradient_as_bucket_view`, is a view of its bucket), and its full size is counted (a view of
half a buffer holds the whole buffer). The walk follows attributes of torch, DeepSpeed, Megatron
and Quorum objects, and lists, tuples, sets and dicts, so it finds what an engine actually keeps
rather than what a formula says it should: that is the point of measuring ZeRO.

Engines take it between backward and the optimiser step (the worker asks at the last step), when
a rank holds its gradients as well as its parameters and optimiser state, and activations are
already freed. Two things are left out because they are not training state: tensors on the
`meta` device (DeepSpeed keeps shape-only copies), and DeepSpeed's in-progress-gradient
communication buckets (attributes named `ipg_bucket*`/`ipg_buffer*`, sized by
`reduce_bucket_size`, which `quorum.baseline.engines.deepspeed_engine` bounds by the model size).

`peak_memory_bytes(device)` is `torch.cuda.max_memory_allocated` on CUDA, and on CPU the peak
resident set of the process (`ru_maxrss`): the whole process, interpreter and libraries included,
which is what a user sizing a machine needs.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterator
from typing import Any

import torch

_FOLLOWED_MODULES = ("torch", "deepspeed", "megatron", "quorum", "examples")
_COMMUNICATION_BUFFERS = ("ipg_bucket", "ipg_buffer")
_SKIPPED_TYPES = ("ProcessGroup", "Timer", "SynchronizedWallClockTimer", "Logger")


def state_bytes(*roots: object) -> int:
    """Bytes of distinct tensor storage reachable from `roots` (see the module docstring)."""
    seen: set[tuple[str, int]] = set()
    total = 0
    for tensor in _tensors(roots):
        if tensor.device.type == "meta":
            continue
        storage = tensor.untyped_storage()
        nbytes = storage.nbytes()
        if nbytes == 0:
            continue
        key = (str(tensor.device), storage.data_ptr())
        if key not in seen:
            seen.add(key)
            total += nbytes
    return total


def _tensors(roots: tuple[object, ...]) -> Iterator[torch.Tensor]:
    visited: set[int] = set()
    stack: list[Any] = list(roots)
    while stack:
        obj = stack.pop()
        if obj is None or id(obj) in visited:
            continue
        visited.add(id(obj))
        if isinstance(obj, torch.Tensor):
            yield obj
            stack.extend(getattr(obj, name, None) for name in ("grad", "ds_tensor", "main_grad"))
        elif isinstance(obj, dict):
            stack.extend(obj.values())
            stack.extend(k for k in obj if isinstance(k, torch.Tensor))
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif isinstance(obj, torch.nn.Module):
            stack.extend(obj.parameters())
            stack.extend(obj.buffers())
            stack.extend(_attributes(obj))
        elif isinstance(obj, torch.optim.Optimizer):
            stack.extend(obj.state.values())
            stack.extend(group["params"] for group in obj.param_groups)
            stack.extend(_attributes(obj))
        elif _followed(obj):
            stack.extend(_attributes(obj))


def _followed(obj: object) -> bool:
    cls = type(obj)
    if cls.__name__ in _SKIPPED_TYPES or isinstance(obj, type):
        return False
    return cls.__module__.split(".", 1)[0] in _FOLLOWED_MODULES and hasattr(obj, "__dict__")


def _attributes(obj: object) -> list[Any]:
    try:
        items = vars(obj).items()
    except TypeError:
        return []
    return [value for name, value in items if not name.startswith(_COMMUNICATION_BUFFERS)]


def peak_memory_bytes(device: torch.device) -> int:
    """See the module docstring."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux
