"""Moving small tensors onto the training device without stalling the host.

A plain ``tensor.to("cuda")`` from ordinary (pageable) host memory copies and then waits for the stream, so the
host stops until every kernel queued before it has run: once per training step, that leaves the GPU idle while
the host prepares the next step. :func:`to_device` copies CPU tensors bound for CUDA through pinned memory with a
non-blocking copy instead (PyTorch's pinned-memory cache keeps the buffer until the copy is done).
"""

from __future__ import annotations

from typing import Union

import torch


def to_device(t: torch.Tensor, device: Union[str, torch.device]) -> torch.Tensor:
    """``t`` on ``device``; a CPU -> CUDA copy is non-blocking (through pinned memory), anything else is ``t.to``."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
