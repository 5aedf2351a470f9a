"""Where `leukodx screen` runs its tasks (reading stripes, screening partitions): this process, a local
process pool (forked, so workers inherit the loaded knowledge base), or a Dask distributed cluster.
Each gives ``submit(fn, tasks)``, which yields (task, result, error) as each task finishes; a task
that fails is reported, never raised, so one bad partition does not stop the others."""
from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Iterator, Optional

__all__ = ["Executor", "ScreenError", "Submit"]


class ScreenError(Exception):
    """A usage error of `leukodx screen` (here: Dask missing, the scheduler unreachable): exit 2 with this
    message."""


Submit = Callable[[Callable[[dict[str, Any]], Any], list[dict[str, Any]]],
                  Iterator[tuple[dict[str, Any], Optional[dict[str, Any]], Optional[str]]]]


class Executor:
    """(mode, workers, submit, sees) for the run: ``submit(fn, tasks)`` yields (task, result, error)
    as each task finishes; ``sees(path)`` says whether every worker sees ``path``."""

    def __init__(self, jobs: Optional[int], dask: Optional[str], dask_workers: Optional[int], client: Any):
        self.jobs, self.dask, self.dask_workers, self.client = jobs, dask, dask_workers, client
        self._close: list[Any] = []

    def __enter__(self) -> tuple[str, int, Submit, Callable[[str], bool]]:
        if self.client is not None or self.dask:
            return self._dask()
        jobs = self.jobs or os.cpu_count() or 1
        if jobs == 1:
            return "this process", 1, _in_process, lambda path: True
        pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork" if sys.platform != "win32"
                                                                                else "spawn"))
        self._close.append(pool)

        def submit(fn: Callable[[dict[str, Any]], Any],
                   tasks: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Any, Optional[str]]]:
            futures = {pool.submit(fn, t): t for t in tasks}
            for fut in as_completed(futures):
                exc = fut.exception()
                yield futures[fut], (None if exc else fut.result()), (f"{type(exc).__name__}: {exc}" if exc else None)
        return f"local pool of {jobs} processes", jobs, submit, lambda path: True

    def _dask(self) -> tuple[str, int, Submit, Callable[[str], bool]]:
        try:
            from distributed import Client, LocalCluster, as_completed as dask_completed
        except ImportError:
            raise ScreenError("--dask needs Dask distributed: pip install 'leukodx[screen]'") from None
        client = self.client
        if client is None:
            if self.dask == "local":
                n = self.dask_workers or os.cpu_count() or 1
                cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0")
                self._close.append(cluster)
                client = Client(cluster)
            else:
                try:
                    client = Client(self.dask, timeout=30)
                except (OSError, TimeoutError, ValueError) as e:
                    raise ScreenError(f"--dask {self.dask}: cannot reach the scheduler: {e}") from None
            self._close.insert(0, client)
            if self.dask == "local":
                self._close.insert(0, _Quiet(client))
        workers = max(1, sum(client.nthreads().values()))

        def submit(fn: Callable[[dict[str, Any]], Any],
                   tasks: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Any, Optional[str]]]:
            if not tasks:
                return
            futures = client.map(fn, tasks, pure=False)
            by_key = {f.key: t for f, t in zip(futures, tasks)}
            for fut in dask_completed(futures):
                if fut.status == "error":
                    exc = fut.exception()
                    yield by_key[fut.key], None, f"{type(exc).__name__}: {exc}"
                else:
                    yield by_key[fut.key], fut.result(), None
                fut.release()

        def sees(path: str) -> bool:
            return all(client.run(os.path.isdir, path).values())
        return f"Dask, {workers} worker threads", workers, submit, sees

    def __exit__(self, *exc: Any) -> None:
        for thing in self._close:
            if isinstance(thing, ProcessPoolExecutor):
                thing.shutdown(wait=True, cancel_futures=True)
            else:
                thing.close()


class _Quiet:
    """Stops the heartbeats of the workers of a cluster this run started, before it is closed: a heartbeat in
    flight while the scheduler shuts down is logged by the worker as an error with two tracebacks (about one
    run in ten), which a user would read as a failed screen."""

    def __init__(self, client: Any):
        self.client = client

    def close(self) -> None:
        try:
            self.client.run(_stop_heartbeat)
        except Exception:   # noqa: BLE001 - best effort: the cluster is being closed either way
            pass


def _stop_heartbeat(dask_worker: Any) -> None:
    dask_worker.periodic_callbacks["heartbeat"].stop()


def _in_process(fn: Callable[[dict[str, Any]], Any],
                tasks: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Any, Optional[str]]]:
    for t in tasks:
        try:
            yield t, fn(t), None
        except Exception as e:   # noqa: BLE001 - a partition that fails is reported; --resume retries it
            yield t, None, f"{type(e).__name__}: {e}"
