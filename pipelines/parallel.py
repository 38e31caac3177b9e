"""Ingestion on every core: inputs parsed in worker processes (or Ray tasks), merged in order.

A reader hands `map_ordered` a pure function (one input -> its de-identified facts and its
refusals) and the inputs; the results come back in the order of the inputs, so the reader
merges them into the same on-disk stores, quarantine and report as a sequential run would,
entry for entry. The workers are a `concurrent.futures.ProcessPoolExecutor` on this
machine's cores (a forkserver: a silo node's gRPC and torch threads are never forked), or
Ray tasks when the node names a cluster (`Workers.ray_address`).

One ingestion run holds one `WorkerPool`: started by the first reader that has enough inputs,
shared by the readers after it (FHIR, DICOM headers, chosen slices, volumes, wearable files),
shut down when the run ends. Inputs that are fetched over the network (a PACS) are read by
threads instead (`fetch_ordered`): waiting for a server needs no core.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from .errors import PipelineError

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
#: Modules a worker imports once, before its first input (fhir.resources' models, pydicom and MONAI take seconds).
PRELOAD = ["pipelines.ehr.fhir", "pipelines.imaging.instances", "pipelines.wearables.signals"]
#: Batches in flight per worker: enough to keep each busy, few enough to keep memory flat.
IN_FLIGHT_PER_WORKER = 4
#: Inputs per batch (`batch_size`): at least this many batches per worker, and at most MAX_BATCH inputs in one.
BATCHES_PER_WORKER = 16
MAX_BATCH = 32
#: Input bytes per batch, where the reader gives each input's size: a worker's results grow with what it read (a FHIR
#: file's facts), so a batch holds at most about this much input; an input larger than this is a batch of its own.
BATCH_BYTES = 1 << 20


class Workers(BaseModel):
    """How many workers parse a node's inputs ([data.workers] in node.toml)."""

    model_config = ConfigDict(extra="forbid")

    processes: int | None = Field(default=None, ge=1)  # None: every core of this machine; 1: in the ingesting process
    ray_address: str | None = None  # parse as Ray tasks on this cluster ("auto": the one this machine belongs to)
    # Fewer inputs than this are parsed in the ingesting process: starting workers (a forkserver that
    # imports fhir.resources) cost 5-10 s on a loaded 2-core machine, more than 100 synthetic patients'
    # bundles took to parse there; with 300 two workers parsed 1.7x as fast (benchmarks/ingest.py).
    # Once a run's pool is started, every later reader's inputs go to it, however few.
    min_inputs: int = Field(default=128, ge=1)
    # An uncompressed NDJSON file larger than this is parsed in chunks of lines of about this size, each one input
    # (pipelines/ehr/ndjson.py): 1 MiB is about a thousand resources, a second of one core's work.
    ndjson_chunk_bytes: int = Field(default=1 << 20, ge=1 << 12)
    # PACS (DICOMweb) instances fetched at a time, by threads of the ingesting process
    fetches: int = Field(default=8, ge=1)

    def count(self) -> int:
        """The number of workers: `processes`, else the cores this process may run on."""
        return self.processes or cores()


SEQUENTIAL = Workers(processes=1)


def cores() -> int:
    """The CPU cores this process may use (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class WorkerPool:
    """The worker processes of one ingestion run, as a context manager: started on first use, shut down on exit.

    Every reader of the run maps its inputs through the same pool, so the workers (and what they import and
    warm up) start once per run, not once per reader.
    """

    def __init__(self, workers: Workers = SEQUENTIAL) -> None:
        self.settings = workers
        self._pool: ProcessPoolExecutor | None = None
        self._ready = threading.Event()  # set once a worker has answered (or the start failed: `_failed`)
        self._failed: BaseException | None = None
        self.starts = 0  # times a process pool was started (once per run at most)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers; inputs still queued (a reader that stopped early) are dropped. Workers still starting
        (this process did every input itself meanwhile) are not waited for: they stop once started, by a thread
        that the interpreter waits for at exit, so that a short `fedcare silo ingest` does not exit under a
        starting worker (which then printed a traceback, unable to find the pool's semaphores)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if self._ready.is_set():
            pool.shutdown(wait=True, cancel_futures=True)
        else:  # the starting thread holds the pool's lock until its worker is up: stopped from a thread of its own
            threading.Thread(target=pool.shutdown, kwargs={"cancel_futures": True}, name="fedcare-workers-stop",
                             daemon=False).start()

    @property
    def started(self) -> bool:
        return self._pool is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the started pool's first worker has answered; False if it has not within `timeout` s."""
        return self._ready.wait(timeout)

    def expect(self, inputs: int) -> None:
        """`inputs` are coming: start the workers now, without waiting for them, if `map_ordered` would. A reader calls
        this once it has listed its inputs, so that the workers start (seconds) while it hashes them."""
        if self._uses_workers(inputs) and self.settings.ray_address is None:
            self._start(self.settings.count())

    def _uses_workers(self, inputs: int) -> bool:
        return self.settings.count() > 1 and inputs > 0 and (inputs >= self.settings.min_inputs or self.started)

    def map_ordered(self, fn: Callable[[T], R], items: Iterable[T], sizes: Sequence[int] | None = None) -> Iterator[R]:
        """fn(item) for every item, in the order of `items`. In this process with one worker, or with fewer than
        `Workers.min_inputs` items while no pool is started yet; otherwise in batches (`batches`; `sizes`: each
        item's input bytes, to bound a batch's), at most IN_FLIGHT_PER_WORKER per worker pending at a time, so results
        stream as they are merged and memory stays flat. While the workers start (the forkserver imports torch:
        seconds), this process works through the first items itself."""
        items = items if isinstance(items, Sequence) else list(items)
        if not self._uses_workers(len(items)):
            yield from map(fn, items)
            return
        if self.settings.ray_address is not None:
            yield from _ray_map(fn, items, self.settings, sizes)
            return
        n = self.settings.count()
        pool = self._start(n)
        done = 0
        while not self._ready.is_set() and done < len(items):
            yield fn(items[done])
            done += 1
        if self._failed is not None:
            raise PipelineError(f"the ingestion workers could not be started ({type(self._failed).__name__}: "
                                f"{self._failed}); expected a worker process to answer. Set [data.workers] processes "
                                "= 1 in node.toml to parse in the node's own process") from self._failed
        yield from _batched(lambda batch: pool.submit(_call_each, fn, batch), lambda future: future.result(),
                            items[done:], n, None if sizes is None else sizes[done:])

    def _start(self, n: int) -> ProcessPoolExecutor:
        """The pool, started on first use: its first worker is started by a thread, so that this process need not
        wait for it."""
        if self._pool is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(PRELOAD)
            self._pool = ProcessPoolExecutor(max_workers=n, mp_context=context)
            self.starts += 1
            self._ready.clear()
            self._failed = None
            threading.Thread(target=self._answer, args=(self._pool,), name="fedcare-workers-start", daemon=True).start()
            log.debug("starting %d ingestion workers", n)
        return self._pool

    def _answer(self, pool: ProcessPoolExecutor) -> None:
        try:
            pool.submit(os.getpid).result()
        except BaseException as e:  # handed to the reader that waits for the workers, never lost
            self._failed = e
        finally:
            self._ready.set()


def map_ordered(fn: Callable[[T], R], items: Iterable[T], workers: Workers | WorkerPool,
                sizes: Sequence[int] | None = None) -> Iterator[R]:
    """`WorkerPool.map_ordered` on the run's pool, or on a pool of its own for these items when given `Workers`."""
    if isinstance(workers, WorkerPool):
        yield from workers.map_ordered(fn, items, sizes)
        return
    with WorkerPool(workers) as pool:
        yield from pool.map_ordered(fn, items, sizes)


def expect(workers: Workers | WorkerPool, inputs: int) -> None:
    """`WorkerPool.expect` on the run's pool (a reader's own pool, given `Workers`, starts when it maps)."""
    if isinstance(workers, WorkerPool):
        workers.expect(inputs)


def start_forkserver(workers: Workers) -> threading.Thread | None:
    """Start this process's forkserver in the background (it imports PRELOAD: seconds of one core) when ingestion will
    fork workers from it, and return the thread that waits for it (None: no workers to fork). A node calls this when
    it starts, so that its first ingestion's workers fork in milliseconds instead of the whole ingestion of a small
    hospital (a thousand patients: about 6 s on one core) running before they are up. The forkserver lives as long as
    the process; every ingestion's pool forks from it."""
    if workers.count() <= 1 or workers.ray_address is not None:
        return None
    thread = threading.Thread(target=_start_forkserver, args=(workers,), name="fedcare-forkserver-start", daemon=False)
    thread.start()
    return thread


def _start_forkserver(workers: Workers) -> None:
    """A pool of one worker, started as every pool is (`WorkerPool._start`: the forkserver and its PRELOAD), waited for
    and stopped: its worker answers once the forkserver is up."""
    with WorkerPool(workers) as pool:
        try:
            pool._start(1)
            pool.wait()
            failed = pool._failed
        except Exception as e:  # noqa: BLE001 - (the pool itself could not be made)
            failed = e
        if failed is not None:  # an ingestion that needs the workers reports why they cannot start
            log.warning("the ingestion workers' forkserver could not be started ahead (%s); ingestion starts it", failed)


def settings_of(workers: Workers | WorkerPool) -> Workers:
    """The `Workers` settings of a run's pool, or the settings themselves."""
    return workers.settings if isinstance(workers, WorkerPool) else workers


def fetch_ordered(fn: Callable[[T], R], items: Iterable[T], workers: Workers | WorkerPool) -> Iterator[R]:
    """fn(item) for every item, in order, by `Workers.fetches` threads of this process: for network reads
    (a PACS answers one request while the next is on its way), at most that many pending at a time."""
    items = items if isinstance(items, Sequence) else list(items)
    threads = settings_of(workers).fetches
    if threads <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fedcare-fetch") as pool:
        yield from _windowed(lambda item: pool.submit(fn, item), lambda future: future.result(), items, window=threads)


def _windowed(submit: Callable[[T], Any], result: Callable[[Any], R], items: Sequence[T], *,
              window: int) -> Iterator[R]:
    """Results in the order of `items`, with at most `window` submitted and not yet taken."""
    pending: deque[Any] = deque()
    for item in items:
        pending.append(submit(item))
        if len(pending) >= window:
            yield result(pending.popleft())
    while pending:
        yield result(pending.popleft())


def _ray_map(fn: Callable[[T], R], items: Sequence[T], workers: Workers, sizes: Sequence[int] | None) -> Iterator[R]:
    """Ray tasks on the named cluster, a batch of inputs each, at most IN_FLIGHT_PER_WORKER per CPU pending."""
    import ray

    if not ray.is_initialized():
        ray.init(address=workers.ray_address, log_to_driver=False)
    # The readers' fn is a functools.partial (which ray.remote refuses): a task that calls it, shipped once
    task, fn_ref = ray.remote(num_cpus=1)(_call_each), ray.put(fn)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    yield from _batched(lambda batch: task.remote(fn_ref, batch), ray.get, items, cpus, sizes)


def _batched(submit: Callable[[Sequence[T]], Any], result: Callable[[Any], list[R | _Raised]], items: Sequence[T],
             workers: int, sizes: Sequence[int] | None) -> Iterator[R]:
    """fn's results in the order of `items`, handed to `workers` in `batches`, IN_FLIGHT_PER_WORKER batches per worker
    pending at a time; what an input raised is raised at its place."""
    for results in _windowed(submit, result, batches(items, workers, sizes), window=workers * IN_FLIGHT_PER_WORKER):
        for got in results:
            if isinstance(got, _Raised):
                raise got.error
            yield got


@dataclass(frozen=True)
class _Raised:
    """What an input raised in a worker, handed back in its place in the batch."""

    error: BaseException


def _call_each(fn: Callable[[T], R], batch: Sequence[T]) -> list[R | _Raised]:
    """fn over one batch in a worker; an input that raises does not lose the results of the others."""
    results: list[R | _Raised] = []
    for item in batch:
        try:
            results.append(fn(item))
        except Exception as e:  # noqa: BLE001 - re-raised by the ingesting process at that input's place
            results.append(_Raised(e))
    return results


def batches(items: Sequence[T], workers: int, sizes: Sequence[int] | None = None) -> list[Sequence[T]]:
    """`items` in consecutive batches of `batch_size` items; with `sizes` (each item's input bytes), a batch also
    ends before it would hold more than BATCH_BYTES (an item larger than that is a batch of its own)."""
    count = batch_size(len(items), workers)
    if sizes is None:
        return [items[k:k + count] for k in range(0, len(items), count)]
    out: list[Sequence[T]] = []
    start, held = 0, 0
    for k, size in enumerate(sizes):
        if k > start and (k - start == count or held + size > BATCH_BYTES):
            out.append(items[start:k])
            start, held = k, 0
        held += size
    if start < len(items):
        out.append(items[start:])
    return out


def batch_size(items: int, workers: int) -> int:
    """Inputs handed to a worker at a time. Each hand-over costs the ingesting process about half a millisecond of
    CPU (pickling, a pipe, the pool's locks), as much as a synthetic patient's bundle or DICOM header takes to parse:
    one input at a time made two workers spend 1.5x the CPU of one (benchmarks/ingest.py). Batches are small enough
    that each worker still gets BATCHES_PER_WORKER of them, so the workers finish together, and at most MAX_BATCH
    inputs, so the results held at a time (IN_FLIGHT_PER_WORKER batches per worker) stay bounded."""
    return max(1, min(MAX_BATCH, items // (workers * BATCHES_PER_WORKER)))
