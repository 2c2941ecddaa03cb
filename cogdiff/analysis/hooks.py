"""Hooks that record what a U-ViT computes inside, without changing what it returns.

* :func:`capture_attention` records the attention weights of chosen blocks (per head) on every
  forward call of the model, e.g. during a whole ``UViTPipeline`` call, together with the timestep
  the model was called with. The weights are recomputed from each attention module's input by the
  module itself (``attn.weights(*attn.qkv_heads(x)[:2])``: its qkv projection, ``qk_norm`` and
  Cog/softmax heads); nothing in the forward pass is replaced.
* :func:`capture_block_outputs` records the token states after each block (and the block-0 input).
* :func:`attention_hooks` calls a function with each attention module's input and output (used by
  :func:`capture_attention` and :mod:`cogdiff.analysis.diagnostics`).

All are context managers that remove all their hooks on exit (also on errors).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import torch

from ..attention import cog_weights, softmax_weights
from ..models.uvit import split_qkv

TimestepFilter = Union[None, Iterable[float], Callable[[float], bool]]


@dataclass
class AttentionRecord:
    """Weights of one block on one model call.

    Attributes:
        block: index into ``model.blocks`` (in-blocks, mid-block, out-blocks).
        call: index of the model forward call this was recorded in (0, 1, ... within the capture).
        timestep: the timestep the model was called with (first sample's value when per-sample).
        attention_type: ``"softmax"`` or ``"cog"``.
        weights: (batch, heads, tokens, tokens) float32; rows are queries, columns keys; tokens are
            ``[time, (label), patches]``.
    """

    block: int
    call: int
    timestep: float
    attention_type: str
    weights: torch.Tensor


@dataclass
class AttentionCapture:
    """What :func:`capture_attention` collected; ``records`` in the order they were computed."""

    extras: int
    grid: int
    records: List[AttentionRecord] = field(default_factory=list)
    calls: List[float] = field(default_factory=list)  # timestep of every model call, captured or not

    @property
    def blocks(self) -> List[int]:
        return sorted({r.block for r in self.records})

    @property
    def timesteps(self) -> List[float]:
        """Distinct captured timesteps in call order (the sampler's order, usually descending)."""
        seen: List[float] = []
        for r in self.records:
            if r.timestep not in seen:
                seen.append(r.timestep)
        return seen

    def get(self, block: int, timestep: Optional[float] = None, call: Optional[int] = None) -> torch.Tensor:
        """Weights of ``block`` at ``timestep`` (or model ``call``); the first match."""
        for r in self.records:
            if r.block == block and (timestep is None or r.timestep == timestep) and (call is None or r.call == call):
                return r.weights
        raise KeyError(f"no record for block={block}, timestep={timestep}, call={call}; blocks {self.blocks}")


def _timestep_value(args: tuple, kwargs: dict) -> float:
    t = kwargs["timestep"] if "timestep" in kwargs else args[1]
    return float(torch.as_tensor(t).reshape(-1)[0])


def _wants(t: float, timesteps: TimestepFilter) -> bool:
    if timesteps is None:
        return True
    if callable(timesteps):
        return bool(timesteps(t))
    return any(abs(t - float(s)) < 1e-6 for s in timesteps)


def _resolve_blocks(model, blocks: Optional[Sequence[int]]) -> List[int]:
    n = len(model.blocks)
    idx = list(range(n)) if blocks is None else [b % n if -n <= b < n else b for b in blocks]
    bad = [b for b in idx if not 0 <= b < n]
    if bad:
        raise ValueError(f"blocks {bad} out of range: the model has blocks 0..{n - 1}")
    return idx


def attention_weights_from_qkv(qkv_out: torch.Tensor, num_heads: int, attention_type: str) -> torch.Tensor:
    """(B, N, 3D) output of ``UViTAttention.qkv`` -> (B, H, N, N) float32 weights of that type.

    For blocks without ``qk_norm`` or a head split; :func:`capture_attention` uses each block's own
    ``attn.weights`` (which includes both)."""
    q, k, _ = split_qkv(qkv_out.detach(), num_heads)  # (B, H, N, Dh)
    fn = cog_weights if attention_type == "cog" else softmax_weights
    return fn(q, k)


AttentionFn = Callable[[int, torch.nn.Module, torch.Tensor, torch.Tensor], None]


@contextlib.contextmanager
def attention_hooks(model, fn: AttentionFn, blocks: Optional[Sequence[int]] = None) -> Iterator[None]:
    """Call ``fn(block_index, attn, x, out)`` after the attention module of each chosen block runs.

    ``attn`` is the block's ``UViTAttention``, ``x`` its (B, N, D) input and ``out`` its (B, N, D) output;
    ``attn.qkv_heads(x)`` gives q, k, v as the scores saw them. ``fn``'s return value is ignored, so the
    model's outputs never change. All hooks are removed on exit (also on errors).
    """
    idx = _resolve_blocks(model, blocks)
    handles = []

    def make_hook(i: int):
        def hook(module, inputs, output):
            fn(i, module, inputs[0], output)

        return hook

    try:
        all_blocks = model.blocks
        for i in idx:
            handles.append(all_blocks[i].attn.register_forward_hook(make_hook(i)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def capture_attention(
    model,
    blocks: Optional[Sequence[int]] = None,
    timesteps: TimestepFilter = None,
    max_batch: Optional[int] = None,
    device: Union[str, torch.device, None] = "cpu",
) -> Iterator[AttentionCapture]:
    """Record attention weights of ``model`` (a :class:`~cogdiff.models.UViTModel`) while inside.

    Args:
        model: the U-ViT (e.g. ``pipe.transformer``).
        blocks: indices into ``model.blocks`` to record (negative ones count from the end); all if None.
        timesteps: record only calls whose timestep is in this collection, or for which this
            predicate is true; all calls if None.
        max_batch: keep only the first ``max_batch`` samples of each call (with classifier-free
            guidance the pipeline's batch is ``[conditional | null-label]``).
        device: where to store the weights (``None`` keeps the model's device).

    Yields an :class:`AttentionCapture` that fills up during the forward calls. Meant for inference
    (e.g. a pipeline call, which runs under ``torch.no_grad``); in training with gradient
    checkpointing the blocks run twice per step and each would be recorded twice.

    Example::

        with capture_attention(pipe.transformer, blocks=[0, -1], max_batch=1) as cap:
            pipe(batch_size=2, num_inference_steps=5, generator=g)
        w = cap.get(block=0, timestep=cap.timesteps[0])  # (1, heads, tokens, tokens)
    """
    grid = model.config.sample_size // model.config.patch_size
    cap = AttentionCapture(extras=int(model.extras), grid=grid)
    state = {"t": None, "call": -1, "active": False}

    def pre_hook(module, args, kwargs):
        state["t"] = _timestep_value(args, kwargs)
        state["call"] += 1
        state["active"] = _wants(state["t"], timesteps)
        cap.calls.append(state["t"])

    def record(i: int, attn, x: torch.Tensor, out: torch.Tensor) -> None:
        if not state["active"]:
            return
        with torch.no_grad():
            q, k, _ = attn.qkv_heads(x if max_batch is None else x[:max_batch])
            w = attn.weights(q, k)
        if device is not None:
            w = w.to(device)
        cap.records.append(AttentionRecord(i, state["call"], state["t"], attn.attention_type, w))

    handle = model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with attention_hooks(model, record, blocks):
            yield cap
    finally:
        handle.remove()


@dataclass
class BlockOutputs:
    """Token states recorded by :func:`capture_block_outputs`, one dict per model call.

    ``states[call][i]`` is the (B, N, D) output of ``model.blocks[i]``; key ``-1`` is the input of
    block 0 (embedded tokens + position embedding). ``timesteps[call]`` is that call's timestep.
    """

    extras: int
    states: List[Dict[int, torch.Tensor]] = field(default_factory=list)
    timesteps: List[float] = field(default_factory=list)


@contextlib.contextmanager
def capture_block_outputs(
    model, max_batch: Optional[int] = None, device: Union[str, torch.device, None] = "cpu"
) -> Iterator[BlockOutputs]:
    """Record the token states entering block 0 and leaving every block, per model call."""
    rec = BlockOutputs(extras=int(model.extras))

    def keep(x: torch.Tensor) -> torch.Tensor:
        x = x.detach() if max_batch is None else x.detach()[:max_batch]
        return x.to(device) if device is not None else x.clone()

    def pre_hook(module, args, kwargs):
        rec.timesteps.append(_timestep_value(args, kwargs))
        rec.states.append({})

    def first_block_pre(module, args):
        rec.states[-1][-1] = keep(args[0])

    def make_hook(i: int):
        def hook(module, inputs, output):
            rec.states[-1][i] = keep(output)

        return hook

    handles = [model.register_forward_pre_hook(pre_hook, with_kwargs=True)]
    try:
        blocks = model.blocks
        handles.append(blocks[0].register_forward_pre_hook(first_block_pre))
        for i, blk in enumerate(blocks):
            handles.append(blk.register_forward_hook(make_hook(i)))
        yield rec
    finally:
        for h in handles:
            h.remove()
