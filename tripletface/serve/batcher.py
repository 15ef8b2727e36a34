"""Micro-batching: the images of concurrent requests go to the model together, on one thread.

:class:`MicroBatcher` collects jobs for a few milliseconds and hands them, as one list, to a
batch function that runs on a single dedicated thread (so the model and detector are never used
by two threads at once); :func:`embed_jobs` is the service's batch function (one detector call,
one embedding call).
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from tripletface.serve.errors import ServiceError

__all__ = ["Job", "Embedded", "BatchStats", "MicroBatcher", "embed_jobs"]


@dataclass
class Job:
    """One image to embed: ``aligned`` skips detection; ``field`` names it in errors."""

    image: np.ndarray
    aligned: bool
    field: str


@dataclass
class Embedded:
    """An embedding, and the detected face (None for aligned input)."""

    embedding: np.ndarray
    face: dict | None = None


@dataclass
class BatchStats:
    """Counters, updated on the event loop only."""

    requests: int = 0
    batches: int = 0
    largest_batch: int = 0
    images: int = 0

    def to_dict(self) -> dict:
        return {"requests": self.requests, "images": self.images, "batches": self.batches,
                "largest_batch": self.largest_batch,
                "mean_batch": round(self.images / self.batches, 3) if self.batches else 0.0}


class MicroBatcher:
    """Collects the jobs of concurrent requests and runs them as one batch on one thread.

    ``process(jobs) -> results`` (one result per job, in order; an exception instance as a
    result fails only that job) is only ever called from a single dedicated thread, so the
    objects it uses (the model, the detector) are never used by two threads at once. The
    first job of a batch waits ``window_ms`` for company; at most ``max_batch`` jobs go
    together (the jobs of one :meth:`submit` are never split). While a batch runs, new jobs
    queue and form the next one.

    The queue and the collecting task belong to the running event loop; they are (re)made
    on first use in a loop, so the batcher works under any ASGI server or test client.
    """

    def __init__(self, process, max_batch: int = 32, window_ms: float = 5.0):
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch <= 0:
            raise ValueError(f"max_batch must be a positive integer, received: {max_batch!r}")
        if not isinstance(window_ms, (int, float)) or not math.isfinite(window_ms) or window_ms < 0:
            raise ValueError(f"window_ms must be a finite number >= 0, received: {window_ms!r}")
        self._process = process
        self.max_batch = int(max_batch)
        self.window = float(window_ms) / 1000.0
        self._executor = None
        self._loop = None
        self._queue = None
        self._task = None
        self.stats = BatchStats()

    def _ensure_started(self):
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tripletface-model")
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop = loop
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._collect())
        return loop

    async def submit(self, jobs: list) -> list:
        """Queue ``jobs`` (kept together in one batch when they fit) and wait for their results."""
        loop = self._ensure_started()
        futures = [loop.create_future() for _ in jobs]
        self.stats.requests += 1
        self._queue.put_nowait(list(zip(jobs, futures)))
        return list(await asyncio.gather(*futures))

    async def _collect(self):
        queue = self._queue
        loop = asyncio.get_running_loop()
        carry = None  # a request that did not fit into the previous batch
        while True:
            batch = list(carry if carry is not None else await queue.get())
            carry = None
            if self.window and len(batch) < self.max_batch:
                await asyncio.sleep(self.window)  # let concurrent requests join
            while len(batch) < self.max_batch and not queue.empty():
                group = queue.get_nowait()
                if len(batch) + len(group) > self.max_batch:
                    carry = group
                    break
                batch.extend(group)
            batch = [(job, fut) for job, fut in batch if not fut.done()]  # a cancelled request drops out
            if not batch:
                continue
            self.stats.batches += 1
            self.stats.images += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            try:
                results = await loop.run_in_executor(self._executor, self._process, [job for job, _ in batch])
            except Exception as e:  # noqa: BLE001 - handed to every waiting request
                results = [e] * len(batch)
            for (_, fut), result in zip(batch, results):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    async def aclose(self):
        """Stop collecting and let the model thread go (a later request starts them again)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def embed_jobs(embedder, jobs: list) -> list:
    """The batch function (model thread only): detect+align the photos in one call, then embed
    every face in one call. One result per job: :class:`Embedded` or a :class:`ServiceError`."""
    from tripletface.inference.embedder import resize_images

    results: list = [None] * len(jobs)
    faces: dict[int, tuple[np.ndarray, dict | None]] = {}
    photos = [i for i, job in enumerate(jobs) if not job.aligned]
    if photos:
        found = embedder.cropper.process([jobs[i].image for i in photos])
        for i, r in zip(photos, found):
            if r.ok:
                faces[i] = (r.aligned, {"box": r.box, "score": r.score, "landmarks": r.landmarks})
            else:
                results[i] = ServiceError(422, r.status, f"{jobs[i].field}: {r.reason or r.status}", jobs[i].field)
    for i, job in enumerate(jobs):
        if job.aligned:
            faces[i] = (job.image, None)
    if faces:
        order = sorted(faces)
        batch = np.stack([resize_images(faces[i][0][None], embedder.image_size)[0] for i in order])
        vectors = embedder.embed_aligned(batch)
        for k, i in enumerate(order):
            results[i] = Embedded(vectors[k], faces[i][1])
    return results
