"""Request queue and micro-batching: jobs with the same key share one call of the inference function.

The event loop only queues and dispatches; the inference function runs in one worker thread
(the model is not re-entrant: a sampler mutates its KV cache), so `/health` and new requests are
served while a batch decodes. A batch is the oldest waiting job plus every other waiting job
with the same key, up to `max_batch` prompts, gathered for at most `wait_s` after the oldest
arrived; jobs that arrive while the worker is busy are batched when it frees. `max_batch=1`
turns batching off. At most `max_queue` prompts wait: a job that would exceed it is refused
(`QueueFull`) at once rather than queued behind work the server cannot finish soon.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """The queue already holds as many prompts as it may."""


@dataclass
class Job:
    """One request's share of a batch."""

    key: Hashable  # jobs with equal keys may share a sampler call
    size: int  # prompts it adds to the batch
    payload: Any  # what the inference function reads
    future: asyncio.Future = field(default=None, repr=False)  # type: ignore[assignment]


class Batcher:
    """Queue jobs, run `run(payloads) -> results` (same length, same order) on batches in a worker thread."""

    def __init__(
        self,
        run: Callable[[list[Any]], list[Any]],
        *,
        max_batch: int,
        wait_s: float,
        max_queue: int = 256,
        on_batch: Callable[[int], None] | None = None,
    ):
        self.run = run
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.max_queue = max_queue  # most prompts waiting (not yet in a sampler call)
        self.on_batch = on_batch  # called with the prompts of each batch (metrics)
        self.waiting: list[Job] = []
        self.arrived = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dgalign-inference")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, key: Hashable, size: int, payload: Any) -> Any:
        """Queue a job and wait for its result (the inference function's exception is raised here).

        Raises `QueueFull` without queueing when `size` more prompts would exceed `max_queue`.
        """
        if self.pending + size > self.max_queue:
            raise QueueFull(f"{self.pending} prompts are waiting and at most {self.max_queue} may")
        job = Job(key, size, payload, asyncio.get_running_loop().create_future())
        self.waiting.append(job)
        self.arrived.set()
        return await job.future

    @property
    def pending(self) -> int:
        """Prompts waiting for a sampler call."""
        return sum(j.size for j in self.waiting if not j.future.done())  # a cancelled job does not count

    def _batch_size(self, key: Hashable) -> int:
        return sum(j.size for j in self.waiting if j.key == key)

    def _take(self, key: Hashable) -> list[Job]:
        """The oldest job and the following jobs with its key, while they fit in `max_batch` prompts."""
        batch, size = [], 0
        for job in self.waiting:
            if job.key == key and (not batch or size + job.size <= self.max_batch):
                batch.append(job)
                size += job.size
        self.waiting = [j for j in self.waiting if j not in batch]
        return [j for j in batch if not j.future.done()]  # a cancelled request is dropped

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.waiting:
                self.arrived.clear()
                await self.arrived.wait()
                continue
            key = self.waiting[0].key
            deadline = loop.time() + self.wait_s
            while self._batch_size(key) < self.max_batch and (left := deadline - loop.time()) > 0:
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), left)
                except TimeoutError:
                    break
            batch = self._take(key)
            if not batch:
                continue
            if self.on_batch is not None:
                self.on_batch(sum(j.size for j in batch))
            try:
                results = await loop.run_in_executor(self.executor, self.run, [j.payload for j in batch])
            except Exception as err:  # the requests fail, the server keeps serving
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            for job, result in zip(batch, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)
