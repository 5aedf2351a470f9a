"""CPU work (parsing a body, assessing a case, mapping FHIR) off the event loop.

A route that parses or assesses on the event loop stops every other request of its worker for as
long as that takes (a 1 MiB YAML body took 5-12 s). :func:`run_cpu` runs the work in a worker
thread, at most ``cpu_threads`` at once per process: more threads would only fight the event loop
for the GIL, and the loop must stay free to answer ``/healthz`` and to read other requests.

Small work runs on the loop itself (``inline=True``): a body of at most :data:`INLINE_MAX_BYTES`
parses, maps and assesses in a millisecond or two, less than a thread hop costs under load (the
hand-over waits for the GIL, up to its 5 ms switch interval), and a thread would not run it in
parallel anyway (it holds the GIL). Routes decide by the size of what they were sent.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable, TypeVar

import anyio
import anyio.to_thread

__all__ = ["run_cpu", "loop_local", "CPU_THREADS", "INLINE_MAX_BYTES"]

T = TypeVar("T")
CPU_THREADS = 2
INLINE_MAX_BYTES = 64 * 1024      # a case with about 150 lab values, a CDS call with about 60 resources
_LIMITERS: dict[Any, tuple[asyncio.AbstractEventLoop, Any]] = {}


def loop_local(registry: dict[Any, tuple[asyncio.AbstractEventLoop, Any]], key: Any, make: Callable[[], T]) -> T:
    """The running event loop's own object under ``key`` in ``registry``, made on first use (tests
    run several loops; an object of a closed loop is dropped)."""
    loop = asyncio.get_running_loop()
    entry = registry.get((id(loop), key))
    if entry is None or entry[0] is not loop:
        for old in [k for k, (other, _) in registry.items() if other.is_closed()]:
            del registry[old]
        entry = registry[(id(loop), key)] = (loop, make())
    return entry[1]


def _limiter() -> anyio.CapacityLimiter:
    return loop_local(_LIMITERS, None, lambda: anyio.CapacityLimiter(CPU_THREADS))


async def run_cpu(fn: Callable[..., T], *args: Any, abandon_on_cancel: bool = False, inline: bool = False) -> T:
    """``fn(*args)`` in a worker thread (bounded per process), or here when ``inline``; its exceptions
    are raised here. With ``abandon_on_cancel``, a cancelled caller stops waiting at once (the thread
    finishes alone)."""
    if inline:
        return fn(*args)
    return await anyio.to_thread.run_sync(fn, *args, limiter=_limiter(), abandon_on_cancel=abandon_on_cancel)
