"""The inference batcher: each caller gets its own row under concurrency, batches run when
full or when the oldest item has waited the delay, errors stay in their batch, close()
leaves nobody waiting, and the event loop keeps running while a model computes.

`asyncio.wait_for(..., HANG)` only turns a hang into a failure; it bounds no performance.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import random
import threading

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from ecgmon.monitor.batcher import BatcherClosedError, InferenceBatcher, ModelCallError
from ecgmon.monitor.model_loader import resolve_device

# TorchScript is what the daemon loads, deprecated or not (torch 2.13 warns on every script()).
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

HANG = 30.0  # seconds: a guard against a hang, far beyond any delay used here


class IdModel(nn.Module):
    """(window[B,252], rr[B,4]) → [B,2]: the item's id (window[:,0]) and the sum of its rr."""

    def forward(self, window: Tensor, rr: Tensor) -> Tensor:
        if rr.shape[1] != 4:
            raise ValueError("rr must have 4 features")
        return torch.stack([window[:, 0], rr.sum(dim=1)], dim=1)


class PairModel(nn.Module):
    """x[B,8] → (logits[B,3], attention[B,8,8]), like the segment model's (logits, attention)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[:, :3] * 2.0, x.unsqueeze(2) * x.unsqueeze(1)


class FailsOnNegative(nn.Module):
    """Returns x[:, :1]; raises on any batch holding an item whose id is negative."""

    def forward(self, x: Tensor) -> Tensor:
        if bool((x[:, 0] < 0).any()):
            raise RuntimeError("negative id in batch")
        return x[:, :1]


class TinyBeatNet(nn.Module):
    """A small CNN-BiLSTM of the beat model's shape, for checking batched = per-item outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(1, 8, 7, padding=3), nn.ReLU(), nn.MaxPool1d(4))
        self.lstm = nn.LSTM(8, 8, batch_first=True, bidirectional=True)
        self.head = nn.Linear(16 + 4, 5)

    def forward(self, window: Tensor, rr: Tensor) -> Tensor:
        h = self.conv(window.unsqueeze(1)).transpose(1, 2)
        out, _ = self.lstm(h)
        return self.head(torch.cat([out.mean(dim=1), rr], dim=1))


class Recording:
    """Wraps a model: records each batch size and the most calls ever running at once."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.sizes: list[int] = []
        self.running = 0
        self.most_running = 0
        self._lock = threading.Lock()

    def __call__(self, *xs: Tensor):
        with self._lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.sizes.append(int(xs[0].shape[0]))
        try:
            return self.model(*xs)
        finally:
            with self._lock:
                self.running -= 1


def gated_id_model() -> tuple[Callable[[Tensor, Tensor], Tensor], threading.Event, threading.Event]:
    """An IdModel that signals ``started`` and then blocks until ``release`` is set."""
    release = threading.Event()
    started = threading.Event()
    inner = torch.jit.script(IdModel())

    def slow(window: Tensor, rr: Tensor) -> Tensor:
        started.set()
        release.wait(HANG)
        return inner(window, rr)

    return slow, started, release


def beat(item_id: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    window = rng.standard_normal(252).astype(np.float32)
    window[0] = item_id
    return window, rng.random(4).astype(np.float32)


# -- routing ----------------------------------------------------------------------------------


async def test_every_caller_gets_its_own_row_under_concurrency() -> None:
    model = Recording(torch.jit.script(IdModel()))
    rng = np.random.default_rng(1)
    streams, per_stream = 8, 60
    async with InferenceBatcher(model, max_batch=16, max_batch_delay_ms=2, name="beat") as batcher:

        async def one(item_id: int) -> tuple[int, float, object]:
            window, rr = beat(item_id, rng)
            return item_id, float(rr.sum()), await batcher.submit(window, rr)

        async def stream(s: int) -> list:
            # A pipeline does not wait for one beat's class before detecting the next.
            tasks = []
            for k in range(per_stream):
                await asyncio.sleep(random.uniform(0, 0.003))
                tasks.append(asyncio.create_task(one(s * 1000 + k)))
            return await asyncio.gather(*tasks)

        answers = await asyncio.wait_for(asyncio.gather(*(stream(s) for s in range(streams))), HANG)
        stats = batcher.stats()

    for item_id, rr_sum, got in (a for per in answers for a in per):
        assert isinstance(got, np.ndarray) and got.shape == (2,)
        assert got[0] == item_id, f"item {item_id} got the row of item {got[0]}"
        assert got[1] == pytest.approx(rr_sum, rel=1e-6)
    assert sum(model.sizes) == streams * per_stream == stats["items"]
    assert max(model.sizes) <= 16 and stats["largest_batch"] <= 16
    assert stats["batches"] == len(model.sizes)
    assert stats["mean_batch_size"] > 1  # it did batch across streams
    assert model.most_running == 1  # one batch in flight per model
    assert stats["failed_batches"] == 0 and stats["pending"] == 0


async def test_a_burst_is_cut_into_full_batches_in_order() -> None:
    model = Recording(torch.jit.script(IdModel()))
    rng = np.random.default_rng(2)
    async with InferenceBatcher(model, max_batch=7, max_batch_delay_ms=5) as batcher:
        items = [beat(i, rng) for i in range(100)]
        results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(w, r) for w, r in items)), HANG)
    assert [int(r[0]) for r in results] == list(range(100))
    assert max(model.sizes) == 7 and sum(model.sizes) == 100


async def test_batched_outputs_equal_the_model_run_item_by_item() -> None:
    torch.manual_seed(0)
    net = torch.jit.script(TinyBeatNet().eval())
    rng = np.random.default_rng(3)
    items = [beat(i, rng) for i in range(40)]
    async with InferenceBatcher(net, max_batch=16, max_batch_delay_ms=5) as batcher:
        results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(w, r) for w, r in items)), HANG)
    with torch.inference_mode():
        for (w, r), got in zip(items, results):
            alone = net(torch.from_numpy(w)[None], torch.from_numpy(r)[None])[0].numpy()
            np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-5)


async def test_tuple_outputs_are_split_per_item() -> None:
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal(8).astype(np.float32) for _ in range(23)]
    async with InferenceBatcher(torch.jit.script(PairModel()), max_batch=5, max_batch_delay_ms=3) as batcher:
        results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(x) for x in xs)), HANG)
    for x, got in zip(xs, results):
        assert isinstance(got, tuple) and len(got) == 2
        logits, attention = got
        assert logits.shape == (3,) and attention.shape == (8, 8)
        np.testing.assert_allclose(logits, x[:3] * 2, rtol=1e-6)
        np.testing.assert_allclose(attention, np.outer(x, x), rtol=1e-6)


async def test_tensors_and_float64_inputs_and_a_buffer_reused_after_submit() -> None:
    model = torch.jit.script(IdModel())
    async with InferenceBatcher(model, max_batch=8, max_batch_delay_ms=20) as batcher:
        ring = np.zeros(300)  # float64, like a ring buffer the pipeline keeps writing to
        ring[:252] = 7.0
        pending = asyncio.create_task(batcher.submit(ring[:252], torch.ones(4, dtype=torch.float64)))
        await asyncio.sleep(0)  # submitted; the batch has not run yet
        ring[:] = -1.0  # the stream moves on before the batch runs
        got = await asyncio.wait_for(pending, HANG)
    assert got.dtype == np.float32 and got.tolist() == [7.0, 4.0]


# -- when batches run ---------------------------------------------------------------------------


async def test_a_lone_item_runs_once_the_delay_has_passed() -> None:
    async with InferenceBatcher(torch.jit.script(IdModel()), max_batch=1000, max_batch_delay_ms=50) as batcher:
        window, rr = beat(42, np.random.default_rng(5))
        got = await asyncio.wait_for(batcher.submit(window, rr), HANG)  # no other submit needed
        stats = batcher.stats()
    assert got[0] == 42
    assert stats["batches"] == 1 and stats["items"] == 1
    assert stats["last_wait_ms"] >= 50 - 1e-6
    assert stats["last_latency_ms"] >= stats["last_wait_ms"]


async def test_the_oldest_item_sets_the_deadline_for_its_batch() -> None:
    model = Recording(torch.jit.script(IdModel()))
    rng = np.random.default_rng(6)
    async with InferenceBatcher(model, max_batch=1000, max_batch_delay_ms=80) as batcher:
        first = asyncio.create_task(batcher.submit(*beat(1, rng)))
        await asyncio.sleep(0.02)
        second = asyncio.create_task(batcher.submit(*beat(2, rng)))
        results = await asyncio.wait_for(asyncio.gather(first, second), HANG)
        stats = batcher.stats()
    assert [r[0] for r in results] == [1, 2]
    assert model.sizes == [2]  # the late item rode with the early one
    assert stats["last_wait_ms"] >= 80 - 1e-6


async def test_a_full_batch_runs_without_waiting_for_the_delay() -> None:
    model = Recording(torch.jit.script(IdModel()))
    rng = np.random.default_rng(7)
    async with InferenceBatcher(model, max_batch=4, max_batch_delay_ms=10_000) as batcher:
        # Correctness, not speed: with a 10 s delay only the full-batch trigger can answer in 5 s.
        results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(*beat(i, rng)) for i in range(4))), 5)
        stats = batcher.stats()
    assert [r[0] for r in results] == [0, 1, 2, 3]
    assert model.sizes == [4] and stats["last_wait_ms"] < 10_000


async def test_zero_delay_runs_what_has_arrived() -> None:
    model = Recording(torch.jit.script(IdModel()))
    rng = np.random.default_rng(8)
    async with InferenceBatcher(model, max_batch=64, max_batch_delay_ms=0) as batcher:
        got = await asyncio.wait_for(batcher.submit(*beat(3, rng)), HANG)
        burst = await asyncio.wait_for(asyncio.gather(*(batcher.submit(*beat(i, rng)) for i in range(10))), HANG)
    assert got[0] == 3 and [r[0] for r in burst] == list(range(10))
    assert sum(model.sizes) == 11


async def test_items_arriving_during_a_batch_wait_for_the_next_one() -> None:
    slow, started, release = gated_id_model()
    model = Recording(slow)  # type: ignore[arg-type]
    rng = np.random.default_rng(9)
    async with InferenceBatcher(model, max_batch=2, max_batch_delay_ms=1) as batcher:
        first = [asyncio.create_task(batcher.submit(*beat(i, rng))) for i in range(2)]
        while not started.is_set():
            await asyncio.sleep(0.001)
        later = [asyncio.create_task(batcher.submit(*beat(i, rng))) for i in range(2, 7)]
        # Poll rather than sleep a fixed time: on a loaded machine the submits take a while.
        for _ in range(2000):
            if batcher.stats()["pending"] == 5:
                break
            await asyncio.sleep(0.005)
        assert batcher.stats()["pending"] == 5 and batcher.stats()["in_flight"] == 2
        release.set()
        results = await asyncio.wait_for(asyncio.gather(*first, *later), HANG)
    assert [r[0] for r in results] == list(range(7))
    assert model.most_running == 1 and max(model.sizes) == 2


# -- the event loop stays free --------------------------------------------------------------------


async def test_the_event_loop_keeps_running_while_a_model_computes() -> None:
    release = threading.Event()
    started = threading.Event()

    def blocking(x: Tensor) -> Tensor:
        started.set()
        # On the loop's thread this would freeze every other task until it returns.
        release.wait(HANG)
        return x * 2

    async with InferenceBatcher(blocking, max_batch=1, max_batch_delay_ms=0) as batcher:
        result = asyncio.create_task(batcher.submit(np.array([1.5], dtype=np.float32)))
        while not started.is_set():
            await asyncio.sleep(0.001)
        ticks = 0
        for _ in range(10):  # another task ticks while the model call is still blocked
            await asyncio.sleep(0.005)
            assert batcher.stats()["in_flight"] == 1 and not result.done()
            ticks += 1
        release.set()
        got = await asyncio.wait_for(result, HANG)
    assert ticks == 10 and got.tolist() == [3.0]


# -- errors ---------------------------------------------------------------------------------------


async def test_a_model_error_fails_its_batch_only() -> None:
    model = Recording(torch.jit.script(FailsOnNegative()))
    async with InferenceBatcher(model, max_batch=4, max_batch_delay_ms=10_000, name="beat-cnn") as batcher:
        bad = [batcher.submit(np.array([v, 0.0], dtype=np.float32)) for v in (1, -1, 2, 3)]
        outcomes = await asyncio.wait_for(asyncio.gather(*bad, return_exceptions=True), HANG)
        for err in outcomes:
            assert isinstance(err, ModelCallError)
            assert err.model == "beat-cnn" and "beat-cnn" in str(err) and "batch of 4" in str(err)
            assert "negative id" in str(err.__cause__)
        assert len({id(e) for e in outcomes}) == 4  # one exception object per caller
        good = await asyncio.wait_for(
            asyncio.gather(*(batcher.submit(np.array([v, 0.0], dtype=np.float32)) for v in (5, 6, 7, 8))), HANG
        )
        stats = batcher.stats()
    assert [g.tolist() for g in good] == [[5.0], [6.0], [7.0], [8.0]]
    assert stats["failed_batches"] == 1 and stats["failed_items"] == 4 and stats["batches"] == 2
    assert "negative id" in stats["last_error"]


async def test_a_malformed_item_is_batched_apart_and_fails_alone() -> None:
    model = Recording(torch.jit.script(IdModel()))
    rng = np.random.default_rng(10)
    async with InferenceBatcher(model, max_batch=8, max_batch_delay_ms=20) as batcher:
        items = [beat(i, rng) for i in range(6)]
        items[2] = (items[2][0], np.ones(3, dtype=np.float32))  # rr of the wrong length
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(batcher.submit(w, r) for w, r in items), return_exceptions=True), HANG
        )
        # The malformed item was put in a batch of its own (the model then failed on it).
    assert isinstance(outcomes[2], ModelCallError) and "batch of 1" in str(outcomes[2])
    assert "rr must have 4 features" in str(outcomes[2])
    assert [o[0] for k, o in enumerate(outcomes) if k != 2] == [0, 1, 3, 4, 5]
    assert sorted(model.sizes) == [1, 5]


async def test_declared_item_shapes_reject_a_bad_item_at_submit() -> None:
    rng = np.random.default_rng(11)
    async with InferenceBatcher(
        torch.jit.script(IdModel()), 8, 5, name="beat", item_shapes=[(252,), (4,)]
    ) as batcher:
        with pytest.raises(ValueError, match=r"'beat': input 0 of an item must have shape \(252,\), not \(250,\)"):
            await batcher.submit(np.zeros(250, dtype=np.float32), np.zeros(4, dtype=np.float32))
        with pytest.raises(ValueError, match="takes 2 input"):
            await batcher.submit(np.zeros(252, dtype=np.float32))
        got = await asyncio.wait_for(batcher.submit(*beat(9, rng)), HANG)
    assert got[0] == 9


async def test_outputs_that_are_not_per_item_are_a_clear_error() -> None:
    async with InferenceBatcher(lambda x: x.sum(), max_batch=2, max_batch_delay_ms=0, name="odd") as batcher:
        with pytest.raises(ModelCallError, match=r"'odd'.*first dimension should be the batch"):
            await asyncio.wait_for(batcher.submit(np.ones(3, dtype=np.float32)), HANG)
    async with InferenceBatcher(lambda x: {"y": x}, max_batch=2, max_batch_delay_ms=0) as batcher:
        with pytest.raises(ModelCallError, match="expected a tensor or a tuple of tensors"):
            await asyncio.wait_for(batcher.submit(np.ones(3, dtype=np.float32)), HANG)


async def test_a_caller_that_gives_up_does_not_disturb_the_others() -> None:
    model = Recording(torch.jit.script(IdModel()))
    rng = np.random.default_rng(12)
    async with InferenceBatcher(model, max_batch=100, max_batch_delay_ms=50) as batcher:
        tasks = [asyncio.create_task(batcher.submit(*beat(i, rng))) for i in range(5)]
        await asyncio.sleep(0.005)
        tasks[1].cancel()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), HANG)
        stats = batcher.stats()
    assert isinstance(results[1], asyncio.CancelledError)
    assert [results[k][0] for k in (0, 2, 3, 4)] == [0, 2, 3, 4]
    assert model.sizes == [4] and stats["cancelled_items"] == 1


# -- closing --------------------------------------------------------------------------------------


async def test_close_fails_pending_items_and_rejects_new_ones() -> None:
    batcher = InferenceBatcher(torch.jit.script(IdModel()), max_batch=100, max_batch_delay_ms=10_000, name="beat")
    rng = np.random.default_rng(13)
    pending = [asyncio.create_task(batcher.submit(*beat(i, rng))) for i in range(5)]
    await asyncio.sleep(0.01)
    await asyncio.wait_for(batcher.close(), HANG)
    outcomes = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), HANG)
    assert all(isinstance(o, BatcherClosedError) and "'beat'" in str(o) for o in outcomes)
    with pytest.raises(BatcherClosedError, match="'beat' is closed"):
        await batcher.submit(*beat(9, rng))
    await batcher.close()  # twice is harmless
    assert batcher.closed and batcher.stats()["pending"] == 0


async def test_close_with_drain_computes_pending_items() -> None:
    model = Recording(torch.jit.script(IdModel()))
    batcher = InferenceBatcher(model, max_batch=3, max_batch_delay_ms=10_000)
    rng = np.random.default_rng(14)
    pending = [asyncio.create_task(batcher.submit(*beat(i, rng))) for i in range(8)]
    await asyncio.sleep(0.01)  # two full batches may have run; two items wait for company
    await asyncio.wait_for(batcher.close(drain=True), HANG)
    results = await asyncio.wait_for(asyncio.gather(*pending), HANG)
    assert [r[0] for r in results] == list(range(8)) and max(model.sizes) <= 3


async def test_close_lets_the_running_batch_finish() -> None:
    slow, started, release = gated_id_model()
    batcher = InferenceBatcher(slow, max_batch=2, max_batch_delay_ms=10_000)
    rng = np.random.default_rng(15)
    running = [asyncio.create_task(batcher.submit(*beat(i, rng))) for i in range(2)]
    while not started.is_set():
        await asyncio.sleep(0.001)
    queued = [asyncio.create_task(batcher.submit(*beat(i, rng))) for i in range(2, 5)]
    await asyncio.sleep(0.01)
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0.01)
    assert not closing.done()  # waiting for the batch in flight
    release.set()
    await asyncio.wait_for(closing, HANG)
    assert [r[0] for r in await asyncio.gather(*running)] == [0, 1]
    outcomes = await asyncio.gather(*queued, return_exceptions=True)
    assert all(isinstance(o, BatcherClosedError) for o in outcomes)


async def test_close_before_start_and_lazy_start() -> None:
    never = InferenceBatcher(torch.jit.script(IdModel()), 4, 5)
    await never.close()
    with pytest.raises(BatcherClosedError):
        await never.submit(np.zeros(252, dtype=np.float32), np.zeros(4, dtype=np.float32))
    lazy = InferenceBatcher(torch.jit.script(IdModel()), 4, 1)  # no start(): submit starts it
    got = await asyncio.wait_for(lazy.submit(*beat(8, np.random.default_rng(16))), HANG)
    await lazy.close()
    assert got[0] == 8


def test_a_batcher_left_open_leaves_nobody_waiting_when_its_loop_ends() -> None:
    batcher = InferenceBatcher(torch.jit.script(IdModel()), max_batch=100, max_batch_delay_ms=60_000)
    outcome: list[BaseException] = []

    async def main() -> None:
        async def caller() -> None:
            try:
                await batcher.submit(np.zeros(252, dtype=np.float32), np.zeros(4, dtype=np.float32))
            except BaseException as err:  # noqa: BLE001 - recorded for the assertion
                outcome.append(err)
                raise

        asyncio.get_running_loop().create_task(caller())
        await asyncio.sleep(0.01)  # main returns; asyncio.run cancels what is left

    asyncio.run(main())
    assert len(outcome) == 1 and isinstance(outcome[0], (BatcherClosedError, asyncio.CancelledError))


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        InferenceBatcher(torch.jit.script(IdModel()), 0, 5)
    with pytest.raises(ValueError, match="max_batch_delay_ms"):
        InferenceBatcher(torch.jit.script(IdModel()), 4, -1)


# -- devices ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU visible")
async def test_on_cuda_results_come_back_as_cpu_arrays() -> None:
    model = torch.jit.script(IdModel()).cuda()
    async with InferenceBatcher(model, 8, 2, device=resolve_device("cuda")) as batcher:
        got = await asyncio.wait_for(batcher.submit(*beat(4, np.random.default_rng(17))), HANG)
    assert isinstance(got, np.ndarray) and got[0] == 4
