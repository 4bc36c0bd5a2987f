"""The analysis pool: where uploads are analysed, off the event loop that feeds the live
pipelines, with a bounded number of requests admitted (the rest get 429 at once).

``process`` (the default) runs analyses in worker processes started with ``spawn``, each
loading the configured models once: an analysis then never holds the live daemon's
interpreter lock, so a burst of uploads cannot delay live beats. ``thread`` runs them in
threads of this process with the daemon's own loaded models (no second copy, no start-up;
what `ecgmon serve` without a live daemon needs).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
import functools
import multiprocessing
from typing import Any, Callable, Mapping

from ecgmon.config import Config
from ecgmon.http import analyze


class PoolFull(Exception):
    """Every worker is busy and the queue is full."""


class WorkerCrashed(Exception):
    """A worker process died during the analysis (a file that crashes a decoding library):
    the pool starts afresh; the one-line reason is the message."""


class AnalysisPool:
    def __init__(self, config: Config, models: Mapping[str, Any] | None = None,
                 model_errors: list[str] | None = None) -> None:
        hc = config.http
        self.kind = hc.pool
        self.workers = hc.workers
        self.capacity = hc.workers + hc.queue
        self.busy = 0  # admitted requests, running or waiting; only the event loop changes it
        self.ready = False
        self.error: str | None = None
        self._config = config
        self._models = models
        self._model_errors = model_errors or []
        self._executor: Executor | None = None
        self._context: analyze.Context | None = None

    def start(self) -> None:
        """Create the workers (a process pool's own models load in ``warm_up``)."""
        if self.kind == "process":
            self._executor = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=analyze.init_process, initargs=(self._config.model_dump(),),
            )
        else:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="ecgmon-http")

    def set_models(self, models: Mapping[str, Any], errors: list[str]) -> None:
        """The models a thread pool analyses with (the daemon's, once loaded)."""
        self._models, self._model_errors = models, list(errors)

    async def warm_up(self) -> None:
        """Returns once every worker has its models: then the pool is ready."""
        assert self._executor is not None
        if self.kind == "thread":
            if self._models is None:
                from ecgmon.monitor.model_set import load_models

                self._models, self._model_errors = await asyncio.to_thread(load_models, self._config.models)
            self._context = analyze.Context(self._config, self._models, self._model_errors)
        else:
            loop = asyncio.get_running_loop()
            try:
                await asyncio.gather(*(loop.run_in_executor(self._executor, analyze.ping)
                                       for _ in range(self.workers)))
            except BrokenProcessPool as err:
                self.error = f"the analysis workers could not start: {err}"
                raise
        self.ready = True

    @property
    def model_errors(self) -> list[str]:
        return list(self._model_errors)

    async def run(self, job: Callable[..., Any], request: Any) -> Any:
        """Run ``job(request)`` in a worker; PoolFull without waiting when the queue is full."""
        if self.busy >= self.capacity:
            raise PoolFull()
        assert self._executor is not None
        self.busy += 1
        try:
            call = functools.partial(job, request, self._context) if self.kind == "thread" else functools.partial(
                job, request)
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except BrokenProcessPool:
            # Every job of the broken pool fails with it; only the first restarts the workers.
            self._restart()
            raise WorkerCrashed("the analysis worker crashed on this upload (is the file damaged?); "
                                "the workers restart") from None
        finally:
            self.busy -= 1

    def _restart(self) -> None:
        if self.kind != "process" or not self.ready:
            return
        self.ready = False
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self.start()
        task = asyncio.ensure_future(self.warm_up())
        # A pool that cannot start again says so at /readyz (warm_up sets error).
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def close(self) -> None:
        if self._executor is not None:
            # Queued analyses are dropped: their clients are gone with the server.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
