"""Consume batches on a worker thread while the calling thread produces the next ones.

    from cogdiff.metrics.overlap import overlapped
    timings = overlapped(pipeline_batches(...), lambda batch: ..., device="cuda")

:func:`overlapped` pulls the items of ``source`` in the calling thread and hands them, in order, through a bounded
queue to one worker thread that calls ``consume(item)``; so the worker consumes item ``k`` while the calling thread
produces item ``k + 1`` (with a queue of depth ``d``, up to ``d`` items wait between them).

The source stays in the calling thread on purpose: what it may depend on is per-thread state there (the CUDA graphs
that ``torch.compile(mode="reduce-overhead")`` recorded belong to the thread that recorded them, and a sampler in
another thread would record them again; autocast and grad mode are thread-local too), and its exceptions are raised
where they happen. Only the consumer moves to the worker; it starts with default thread state (no autocast, grad
enabled, the device of ``device``).

On CUDA, each side enqueues its work on its own new stream (``torch.cuda.Stream``, non-blocking with respect to the
legacy default stream): both first wait for the work already queued on the caller's current stream, and the caller's
stream waits for both at the end. An item is handed to the consumer only after a CUDA event recorded on the source's
stream right after the item was produced has completed (host-side wait), so items the source made with asynchronous
copies are ready for host and device reads alike; a CUDA tensor item is also marked as used by the consumer's stream
(``record_stream``), so its memory is not reused while the consumer's kernels may still read it. Tensors the
consumer creates belong to the consumer's stream: a caller using them on another stream afterwards should
``record_stream`` them there (see :meth:`cogdiff.metrics.FIDEvaluator.score_images`).

Errors: an exception of the source propagates from :func:`overlapped` unchanged (the worker is told to drop what is
queued and is joined first). An exception of ``consume`` stops the loop (after the source item being produced, if
any), closes the source if it has a ``close`` method (e.g. a generator) and is re-raised in the calling thread as
the same object, its traceback from the worker included. No worker thread outlives the call.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from typing import Any, Callable, Iterable, Optional

import torch

_END = object()  # put last on the queue: the worker stops when it takes it
_POLL_S = 0.05  # how often a blocked put checks that the worker is still alive


def _cuda_index(device) -> Optional[int]:
    """The CUDA device index of ``device`` (its current device for a bare "cuda"), or None off CUDA."""
    if device is None:
        return None
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def _on(stream: Optional[torch.cuda.Stream]):
    """``torch.cuda.stream(stream)`` (which also makes its device current), or nothing off CUDA."""
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


class _Worker(threading.Thread):
    """Takes ``(item, ready_event)`` pairs from :attr:`queue` and calls ``consume(item)`` on ``stream``."""

    def __init__(self, consume: Callable[[Any], None], stream: Optional[torch.cuda.Stream], depth: int):
        super().__init__(name="cogdiff-overlap-consumer", daemon=True)
        self.consume, self.stream = consume, stream
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.cancel = threading.Event()  # set by the caller: drop what is queued and stop
        self.error: Optional[BaseException] = None
        self.busy_s = self.idle_s = 0.0

    def run(self) -> None:
        try:
            with _on(self.stream):
                while True:
                    t = time.perf_counter()
                    entry = self.queue.get()
                    self.idle_s += time.perf_counter() - t
                    if entry is _END or self.cancel.is_set():
                        return
                    t = time.perf_counter()
                    self._consume(*entry)
                    del entry
                    self.busy_s += time.perf_counter() - t
        except BaseException as e:  # handed to the calling thread, which re-raises it
            self.error = e

    def _consume(self, item, ready: Optional[torch.cuda.Event]) -> None:
        if ready is not None:
            ready.synchronize()  # the source's work up to this item is done (device and host side)
            if isinstance(item, torch.Tensor) and item.is_cuda:
                item.record_stream(self.stream)
        self.consume(item)

    def put(self, entry) -> bool:
        """Queue ``entry``, waiting for space while the worker lives; False if it has stopped (an error)."""
        while self.is_alive():
            try:
                self.queue.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def stop(self, cancel: bool) -> None:
        """Let the worker finish what is queued (``cancel``: drop it) and join it."""
        if cancel:
            self.cancel.set()
            with contextlib.suppress(queue.Empty):
                while True:
                    self.queue.get_nowait()
        if self.is_alive():
            self.put(_END)
        self.join()


def overlapped(source: Iterable, consume: Callable[[Any], None], device=None, depth: int = 2) -> dict:
    """Call ``consume(item)`` on a worker thread for every item of ``source`` (pulled in the calling thread), in
    order, the two running at the same time (see the module docstring).

    Args:
        source (`Iterable`): the items, e.g. uint8 image batches from a sampler.
        consume (`Callable`): called once per item, in order, on the worker thread; its return value is ignored.
        device (`torch.device` or `str`, *optional*): on a CUDA device both sides get their own stream.
        depth (`int`, defaults to 2): at most this many produced items wait for the consumer.

    Returns:
        `dict`: seconds, measured on the host: ``source_s`` (in the source, calling thread), ``consume_s`` (in
        ``consume``, worker), ``wait_for_consumer_s`` (the calling thread waiting for room in the queue: the consumer
        is behind), ``wait_for_source_s`` (the worker waiting for an item: the source is behind; includes the
        wait for the first item) and ``wall_s`` (the whole call). ``source_s`` and ``consume_s`` overlap in time.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    index = _cuda_index(device)
    caller = torch.cuda.current_stream(index) if index is not None else None
    src_stream = torch.cuda.Stream(index) if index is not None else None
    worker = _Worker(consume, torch.cuda.Stream(index) if index is not None else None, depth)
    for s in (src_stream, worker.stream):
        if s is not None:
            s.wait_stream(caller)
    t0 = time.perf_counter()
    source_s = wait_s = 0.0
    it, clean = None, False
    worker.start()
    try:
        with _on(src_stream):
            it = iter(source)
        while True:
            t = time.perf_counter()
            with _on(src_stream):
                try:
                    item = next(it)
                except StopIteration:
                    break
                ready = torch.cuda.Event() if src_stream is not None else None
                if ready is not None:
                    ready.record(src_stream)
            t1 = time.perf_counter()
            source_s += t1 - t
            queued = worker.put((item, ready))
            wait_s += time.perf_counter() - t1
            del item
            if not queued:
                break
        clean = worker.error is None
    finally:
        worker.stop(cancel=not clean)
        if not clean and hasattr(it, "close"):
            with _on(src_stream):
                it.close()
        for s in (src_stream, worker.stream):
            if s is not None:
                caller.wait_stream(s)
    if worker.error is not None:
        raise worker.error
    return {"source_s": source_s, "consume_s": worker.busy_s, "wait_for_consumer_s": wait_s,
            "wait_for_source_s": worker.idle_s, "wall_s": time.perf_counter() - t0}
