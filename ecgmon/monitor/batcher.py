"""The inference batcher: pipelines of many streams submit one item each (a beat window, a
segment) and await its result; one model call serves them all, run off the event loop when
``max_batch`` items wait or the oldest has waited ``max_batch_delay_ms``.
"""

from __future__ import annotations

import asyncio
import collections
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
import math
import time
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch


# What a caller gets back: the model's output row for its item, or one row per output.
Output = Union[np.ndarray, tuple[np.ndarray, ...]]

# Latency percentiles in stats() cover this many of the latest items.
LATENCY_WINDOW = 4096


class BatcherClosedError(RuntimeError):
    """The batcher is closed (or closing): the item was not, or will not be, computed."""


class ModelCallError(RuntimeError):
    """The model failed on the batch that held this item; ``__cause__`` is the original error."""

    def __init__(self, model: str, batch_size: int, err: BaseException) -> None:
        super().__init__(f"model {model!r} failed on a batch of {batch_size}: {type(err).__name__}: {err}")
        self.model = model
        self.batch_size = batch_size


@dataclass(eq=False)
class _Item:
    inputs: tuple[np.ndarray, ...]
    # Items batch together only with items of the same shapes and dtypes: a malformed item
    # then fails alone instead of poisoning a batch of other streams' items.
    signature: tuple[tuple[tuple[int, ...], str], ...]
    future: asyncio.Future[Output]
    t_submit: float = field(default_factory=time.monotonic)


class InferenceBatcher:
    """Batches concurrent single-item submits into model calls, one batch in flight at a time.

    ``model`` is any callable (a TorchScript module, a loaded ``.pt2`` module, a function)
    taking one batched tensor per submitted input and returning a tensor or a tuple of
    tensors whose first dimension is the batch. It must already live on ``device`` in eval
    mode (the loader loads it with ``map_location``). Each caller of :meth:`submit` gets its
    own row(s) back as numpy arrays on the CPU; the raw outputs (logits, attention, …) are
    returned unchanged, turning them into probabilities is the model card's business.

    Floating inputs are cast to ``float_dtype`` (float32, the models' dtype) at submit;
    ``item_shapes``, when given, rejects a wrongly shaped item at submit with a ValueError.
    """

    def __init__(
        self,
        model: Callable[..., Any],
        max_batch: int,
        max_batch_delay_ms: float,
        device: torch.device | str = "cpu",
        name: str = "model",
        *,
        item_shapes: Sequence[tuple[int, ...]] | None = None,
        float_dtype: np.dtype | type | None = np.float32,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be ≥ 1, not {max_batch}")
        if not (max_batch_delay_ms >= 0 and math.isfinite(max_batch_delay_ms)):
            raise ValueError(f"max_batch_delay_ms must be a finite number ≥ 0, not {max_batch_delay_ms}")
        self.model = model
        self.max_batch = int(max_batch)
        self.max_batch_delay_ms = float(max_batch_delay_ms)
        self.device = torch.device(device)
        self.name = name
        self.item_shapes = None if item_shapes is None else [tuple(s) for s in item_shapes]
        self.float_dtype = None if float_dtype is None else np.dtype(float_dtype)
        self._delay_s = self.max_batch_delay_ms / 1000.0
        self._queue: collections.deque[_Item] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        # One thread per model: torch gets the cores for the batch while the loop serves
        # the streams; a private executor so slow file I/O in to_thread() cannot delay a batch.
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._drain = False
        self._broken: BaseException | None = None
        # Counters for stats().
        self._batches = 0
        self._items = 0
        self._failed_batches = 0
        self._failed_items = 0
        self._cancelled = 0
        self._largest = 0
        self._in_flight = 0
        self._compute_total = 0.0
        self._last_compute = math.nan
        self._last_wait = math.nan
        self._max_wait = math.nan
        self._latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._last_error: str | None = None

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the background task on the running loop (submit() does it when needed)."""
        if self._closing:
            raise BatcherClosedError(f"inference batcher {self.name!r} is closed")
        if self._worker is None:
            self._wake = asyncio.Event()
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batcher-{self.name}")
            self._worker = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")
            self._worker.add_done_callback(self._worker_done)

    async def close(self, drain: bool = False) -> None:
        """Stop taking items. The batch being computed finishes and delivers its results;
        items still queued are computed at once with ``drain``, else they get a
        BatcherClosedError. Returns when nothing is left pending; calling it again is harmless.
        """
        self._closing = True
        self._drain = self._drain or drain
        if self._worker is None:
            self._fail_queued(f"inference batcher {self.name!r} closed before it ran")
            return
        assert self._wake is not None
        self._wake.set()
        # asyncio.wait: a caller cancelled during close must not cancel the worker half-way,
        # and a worker that died of a bug was already reported to every caller it had.
        await asyncio.wait({self._worker})

    @property
    def closed(self) -> bool:
        return self._closing

    async def __aenter__(self) -> InferenceBatcher:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- submitting ---------------------------------------------------------------------

    async def submit(self, *inputs: np.ndarray | torch.Tensor) -> Output:
        """One item (unbatched inputs, in the model's argument order) → its outputs: an array,
        or a tuple of arrays when the model returns a tuple. Raises ModelCallError when the
        model failed on the item's batch, BatcherClosedError when the batcher is closed.
        """
        if self._broken is not None:
            raise BatcherClosedError(f"inference batcher {self.name!r} stopped: {self._broken!r}")
        if self._closing:
            raise BatcherClosedError(f"inference batcher {self.name!r} is closed; no new items")
        if not inputs:
            raise ValueError(f"submit to {self.name!r} needs at least one input")
        arrays = tuple(self._as_array(x) for x in inputs)
        if self.item_shapes is not None:
            self._check_shapes(arrays)
        self.start()
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        item = _Item(arrays, tuple((a.shape, a.dtype.str) for a in arrays), loop.create_future())
        self._queue.append(item)
        # Wake the worker only when it has something new to decide: a first item to time,
        # or a full batch to run now.
        if len(self._queue) == 1 or len(self._queue) >= self.max_batch:
            self._wake.set()
        return await item.future

    def _as_array(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        a = np.asarray(x)
        if self.float_dtype is not None and a.dtype.kind == "f" and a.dtype != self.float_dtype:
            return a.astype(self.float_dtype)
        # A copy: the caller's array is often a view of a ring buffer that moves on before
        # the batch runs.
        return np.array(a, copy=True)

    def _check_shapes(self, arrays: tuple[np.ndarray, ...]) -> None:
        assert self.item_shapes is not None
        if len(arrays) != len(self.item_shapes):
            raise ValueError(
                f"model {self.name!r} takes {len(self.item_shapes)} input(s) per item, got {len(arrays)}"
            )
        for i, (a, shape) in enumerate(zip(arrays, self.item_shapes)):
            if a.shape != shape:
                raise ValueError(
                    f"model {self.name!r}: input {i} of an item must have shape {shape}, not {a.shape}"
                )

    # -- the worker ---------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while (batch := await self._next_batch()) is not None:
                await self._execute(loop, batch)
        except asyncio.CancelledError:
            # The loop is shutting down without close(): nobody may be left waiting.
            self._closing = True
            self._fail_queued(f"inference batcher {self.name!r} was cancelled")
            raise
        finally:
            if self._executor is not None:
                # Not waiting: a batch abandoned by a cancel finishes in its thread, unheard.
                self._executor.shutdown(wait=False)

    async def _next_batch(self) -> list[_Item] | None:
        """Wait until a batch is due (full, or its oldest item has waited the delay) and take it."""
        assert self._wake is not None
        while True:
            while self._queue and self._queue[0].future.done():  # its caller gave up
                self._queue.popleft()
                self._cancelled += 1
            if self._closing:
                if not self._queue:
                    return None
                if not self._drain:
                    self._fail_queued(f"inference batcher {self.name!r} closed")
                    return None
                return self._take_batch()  # draining: no more waiting for company
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._queue) >= self.max_batch:
                return self._take_batch()
            remaining = self._queue[0].t_submit + self._delay_s - time.monotonic()
            if remaining <= 0:
                return self._take_batch()
            self._wake.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
            except TimeoutError:
                pass  # loop again: the deadline is checked against the clock, not the timer

    def _take_batch(self) -> list[_Item]:
        """Up to max_batch live items like the oldest one; others keep their place in the queue."""
        first = self._queue.popleft()
        batch = [first]
        others: list[_Item] = []
        while self._queue and len(batch) < self.max_batch:
            item = self._queue.popleft()
            if item.future.done():
                self._cancelled += 1
            elif item.signature == first.signature:
                batch.append(item)
            else:
                others.append(item)
        self._queue.extendleft(reversed(others))
        return batch

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        t_start = time.monotonic()
        wait = t_start - batch[0].t_submit  # the oldest item's wait: what the delay bounds
        self._last_wait = wait
        self._max_wait = wait if math.isnan(self._max_wait) else max(self._max_wait, wait)
        self._in_flight = len(batch)
        try:
            results = await loop.run_in_executor(self._executor, self._call, [it.inputs for it in batch])
        except asyncio.CancelledError:
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(BatcherClosedError(f"inference batcher {self.name!r} was cancelled"))
            raise
        except Exception as err:
            self._failed_batches += 1
            self._failed_items += len(batch)
            self._last_error = f"{type(err).__name__}: {err}"
            for it in batch:
                if not it.future.done():
                    # One exception per item: a shared one would collect every awaiter's traceback.
                    exc = ModelCallError(self.name, len(batch), err)
                    exc.__cause__ = err
                    it.future.set_exception(exc)
            results = None
        finally:
            self._in_flight = 0
        t_done = time.monotonic()
        compute = t_done - t_start
        self._last_compute = compute
        self._compute_total += compute
        self._batches += 1
        self._items += len(batch)
        self._largest = max(self._largest, len(batch))
        for i, it in enumerate(batch):
            self._latencies.append(t_done - it.t_submit)
            if results is not None and not it.future.done():
                it.future.set_result(results[i])

    def _call(self, inputs: list[tuple[np.ndarray, ...]]) -> list[Output]:
        """In the worker thread: stack, run the model, split the outputs per item."""
        n = len(inputs)
        # Few torch calls from Python here: each one releases the GIL and must win it back
        # from the event loop's thread, which costs up to sys.getswitchinterval() when busy.
        on_cpu = self.device.type == "cpu"
        batched = [torch.from_numpy(np.stack(column)) for column in zip(*inputs)]
        if not on_cpu:
            batched = [b.to(self.device, non_blocking=True) for b in batched]
        with torch.inference_mode():
            out = self.model(*batched)
        if isinstance(out, torch.Tensor):
            arr = self._to_numpy(out, n, None, on_cpu)
            # Copies: a view would keep the whole batch's array alive as long as any row.
            return [arr[i].copy() for i in range(n)]
        if isinstance(out, (tuple, list)) and out and all(isinstance(o, torch.Tensor) for o in out):
            arrs = [self._to_numpy(o, n, k, on_cpu) for k, o in enumerate(out)]
            return [tuple(a[i].copy() for a in arrs) for i in range(n)]
        raise TypeError(f"the model returned {type(out).__name__}, expected a tensor or a tuple of tensors")

    @staticmethod
    def _to_numpy(t: torch.Tensor, n: int, k: int | None, on_cpu: bool) -> np.ndarray:
        what = "output" if k is None else f"output {k}"
        if t.dim() == 0 or t.shape[0] != n:
            raise ValueError(f"{what} has shape {tuple(t.shape)}; its first dimension should be the batch ({n})")
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()  # half precision (a GPU model) has no or an awkward numpy form
        if t.requires_grad:  # a model called outside inference mode's reach (a plain function)
            t = t.detach()
        return t.numpy() if on_cpu and t.device.type == "cpu" else t.cpu().numpy()

    def _fail_queued(self, message: str) -> None:
        while self._queue:
            it = self._queue.popleft()
            if not it.future.done():
                it.future.set_exception(BatcherClosedError(message))

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        # A bug in the worker must not leave callers hanging: fail them and refuse new items.
        if not task.cancelled() and task.exception() is not None:
            self._broken = task.exception()
            self._closing = True
            self._fail_queued(f"inference batcher {self.name!r} stopped: {self._broken!r}")

    # -- status ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters for the status message; times in milliseconds (NaN before the first batch).

        Latency is submit → result (queue wait + compute) over the latest items; wait is the
        oldest item's time in the queue before its batch started, which the delay bounds.
        """
        lat = np.fromiter(self._latencies, dtype=float) * 1000.0
        p50, p95, p99 = np.percentile(lat, [50, 95, 99]) if lat.size else (math.nan,) * 3
        return {
            "name": self.name,
            "device": str(self.device),
            "max_batch": self.max_batch,
            "max_batch_delay_ms": self.max_batch_delay_ms,
            "batches": self._batches,
            "items": self._items,
            "mean_batch_size": self._items / self._batches if self._batches else math.nan,
            "largest_batch": self._largest,
            "failed_batches": self._failed_batches,
            "failed_items": self._failed_items,
            "cancelled_items": self._cancelled,
            "pending": len(self._queue),
            "in_flight": self._in_flight,
            "closed": self._closing,
            "last_error": self._last_error,
            "last_latency_ms": float(lat[-1]) if lat.size else math.nan,
            "latency_p50_ms": float(p50),
            "latency_p95_ms": float(p95),
            "latency_p99_ms": float(p99),
            "last_wait_ms": self._last_wait * 1000.0,
            "max_wait_ms": self._max_wait * 1000.0,
            "last_compute_ms": self._last_compute * 1000.0,
            "mean_compute_ms": self._compute_total / self._batches * 1000.0 if self._batches else math.nan,
        }
