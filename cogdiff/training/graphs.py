"""When a training run can use CUDA graphs, and how the model is compiled for them.

``train.cuda_graphs`` is ``auto`` (on when ``train.compile`` is set and the run is on CUDA), ``true`` or
``false``. With graphs the model is compiled with ``mode="reduce-overhead"`` (inductor's CUDA-graph trees, which
capture the forward and backward); the optimizer step and the EMA update stay outside the graphs (fused
AdamW-style updates are already few launches). Each step begins with ``torch.compiler.cudagraph_mark_step_begin()``.
"""

from __future__ import annotations

from typing import List

import torch

GRAPH_CHOICES = ("auto", "true", "false")


def graph_blockers(tc, device) -> List[str]:
    """Why ``tc`` (a TrainConfig) on ``device`` cannot run under CUDA graphs; empty when it can."""
    why = []
    if torch.device(device).type != "cuda":
        why.append(f"the device is {torch.device(device).type}, not CUDA")
    if not tc.compile:
        why.append("train.compile is false (graphs are captured by torch.compile)")
    if tc.grad_accum > 1:
        why.append("train.grad_accum > 1 (no_sync micro-batches)")
    if tc.gradient_checkpointing:
        why.append("train.gradient_checkpointing is on")
    if tc.cog_impl == "reference":
        why.append("train.cog_impl=reference")
    return why


def resolve_cuda_graphs(tc, device, error=ValueError, say=print) -> bool:
    """Whether to use CUDA graphs. ``auto`` falls back with one printed line (only when compiling, where graphs
    were expected); ``true`` with a blocker raises ``error`` naming the fix."""
    choice = str(tc.cuda_graphs).lower()
    if choice not in GRAPH_CHOICES:
        raise error(f"train.cuda_graphs must be one of {', '.join(GRAPH_CHOICES)}, got {tc.cuda_graphs!r}")
    if choice == "false":
        return False
    why = graph_blockers(tc, device)
    if not why:
        return True
    if choice == "true":
        raise error(f"train.cuda_graphs=true is not possible: {'; '.join(why)} (set train.cuda_graphs=auto or false)")
    if tc.compile:
        say(f"note: CUDA graphs off: {'; '.join(why)}")
    return False


def compile_for_graphs(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` compiled with inductor's CUDA graphs (fixed shapes: the batch plan keeps every step's shape)."""
    return torch.compile(model, mode="reduce-overhead", dynamic=False)


def mark_step_begin(enabled: bool) -> None:
    """Tell the CUDA-graph trees a new iteration starts (outputs of the previous one may be overwritten)."""
    if enabled:
        torch.compiler.cudagraph_mark_step_begin()
