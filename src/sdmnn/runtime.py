"""How the exact SDM's numba kernels run: their threads, and glibc's handling of freed memory.

Process-wide settings, so nothing here happens at import: the SDM functions call ``prepare_threads``
before their kernels (numba's work-queue layer, workers one per core), and the command line, the
dataset workers and the benchmarks call ``keep_freed_memory`` themselves.
"""
from __future__ import annotations

import math
import os
import threading
import time

import numpy as np


def prepare_threads() -> None:
    """Run the kernels on numba's work-queue threads (unless the user chose a layer with
    ``NUMBA_THREADING_LAYER``), kept one per core (``pin_workers``). Called before every SDM.

    Why the work-queue layer: numba's OpenMP layer keeps its threads spinning after a parallel loop,
    which starves torch's own threads in the same process; the work-queue layer does not spin and ran
    the SDM kernels as fast. The layer is fixed at the first parallel kernel, so this must run first."""
    import numba

    if "NUMBA_THREADING_LAYER" not in os.environ and not _layer_fixed():
        numba.config.THREADING_LAYER = "workqueue"
    pin_workers()


def _layer_fixed() -> bool:
    """Whether numba has already started a threading layer in this process."""
    from numba.np.ufunc import parallel

    return bool(getattr(parallel, "_is_initialized", False))


def keep_freed_memory() -> bool:
    """Let glibc's malloc serve blocks up to 64 MiB from its heap and keep up to 512 MiB of freed memory
    there (mallopt), so that repeated SDMs reuse pages instead of faulting in fresh ones (without it,
    every large SDM faults its pages in anew). Process-wide, so the command line, the dataset workers
    and the benchmarks call it rather than the library. Returns whether it applied (False off glibc)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 64 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 512 << 20))
    except (OSError, AttributeError):
        return False


def can_handle_signals() -> bool:
    """Whether this thread may set signal handlers (Python lets the main thread alone)."""
    return threading.current_thread() is threading.main_thread()


def set_threads(n: int | None) -> None:
    """Use ``n`` threads for the SDM kernels (default: all cores)."""
    import numba

    numba.set_num_threads(n or numba.config.NUMBA_NUM_THREADS)


DEVICES = ("auto", "cpu", "cuda")


def check_device(device) -> str:
    """``device`` if it names one (auto, cpu, cuda, cuda:N), whether or not it is here; else one sentence."""
    import re

    from .errors import SdmnnError

    if not isinstance(device, str) or (device not in DEVICES and not re.fullmatch(r"cuda:\d+", device)):
        raise SdmnnError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {device!r}")
    return device


def resolve_device(device: str = "auto") -> str:
    """The torch device for ``device``: ``auto`` is CUDA when torch sees a GPU, else the CPU; ``cuda`` without a
    GPU is one sentence (SdmnnError)."""
    import torch

    from .errors import SdmnnError

    device = check_device(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SdmnnError(f"device {device} was asked for, but torch sees no CUDA GPU here; use device cpu or auto (--device cpu)")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise SdmnnError(f"device {device} was asked for, but torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def torch_threads() -> int:
    """How many threads torch should use now: every core on a quiet machine, one when other processes keep the
    cores busy (the 1-minute load average above the cores less one half). torch's waiting threads spin, so on
    busy cores two threads ran a network several times slower than one."""
    cores = usable_cores()
    try:
        load = os.getloadavg()[0]
    except OSError:
        return cores
    return 1 if load > cores - 0.5 else cores


class AdaptiveThreads:
    """torch's thread count for each call of a repeated computation, chosen from the times of the calls themselves:
    every core while that is the faster, one thread when it is not. The load average moves too slowly for this: two
    torch threads on cores that other processes keep busy ran a batch-1 prediction up to 65x slower than on quiet
    cores (torch's waiting threads spin), one thread about 2x.

    ``choose()`` gives the count for the next call and ``record(threads, seconds)`` takes its time per item. A call
    on every core that runs more than ``SLOW`` times slower than the best seen there makes the next call try one
    thread; otherwise the count not in use is tried now and then, first ``FIRST_PROBE`` s after the last switch, then
    at doubling intervals up to ``LAST_PROBE`` s while it keeps losing. A try that is faster than the last call of the
    count in use becomes the count in use."""

    SLOW = 2.0
    FIRST_PROBE = 1.0
    LAST_PROBE = 60.0

    def __init__(self, cores: int, start: int | None = None, clock=time.monotonic):
        self.counts = (cores, 1) if cores > 1 else (1,)
        self.current = start if start in self.counts else self.counts[0]
        self.clock = clock
        self.best: dict[int, float] = {}
        self.recent: dict[int, float] = {}
        self.wait = self.FIRST_PROBE
        self.next_probe = clock() + self.wait

    def choose(self) -> int:
        if len(self.counts) > 1 and self.clock() >= self.next_probe:
            return self.counts[self.counts[0] == self.current]  # the count not in use
        return self.current

    def record(self, threads: int, seconds: float) -> None:
        self.best[threads] = min(self.best.get(threads, math.inf), seconds)
        self.recent[threads] = seconds
        now = self.clock()
        if threads != self.current:  # a try of the other count
            if seconds < self.recent.get(self.current, math.inf):
                self.current, self.wait = threads, self.FIRST_PROBE
            else:
                self.wait = min(2 * self.wait, self.LAST_PROBE)
            self.next_probe = now + self.wait
        elif threads > 1 and seconds > self.SLOW * self.best[threads]:
            self.next_probe = now


#: Whether the SDM functions keep numba's worker threads each on its own core (see pin_workers).
#: ``SDMNN_PIN_THREADS=0`` in the environment turns it off.
PIN_THREADS = os.environ.get("SDMNN_PIN_THREADS", "1") != "0"
_pinned: dict = {"state": None, "tids": ()}


def pin_workers() -> bool:
    """Keep numba's worker threads each on its own core while the kernels use two or more threads, one
    per core the process may run on; release them otherwise (fewer threads than cores, one thread, or
    PIN_THREADS off). Pinning only when every core gets one worker means that several processes doing
    the same (dataset workers, say) still share the cores evenly. The SDM functions call it, so a change
    of set_threads takes effect at the next SDM; it does nothing when nothing changed since the last call.

    Why: on this project's 2-core machine, Linux often wakes both workers on the same core after the
    process ran single-threaded work (a Python loop, pysdf, a torch forward pass), and moves one away
    only some milliseconds later; every parallel loop then runs at one core's speed for a while
    (bench/sdm_bench.py measures the scan both ways). Only numba's own workers are pinned, never the
    caller's thread. Returns whether they are pinned now."""
    import numba

    from . import _thread_ids

    if not _thread_ids.AVAILABLE:
        return False
    n = numba.get_num_threads()
    allowed = sorted(os.sched_getaffinity(0))
    want = PIN_THREADS and 2 <= n == len(allowed)
    state = (os.getpid(), want, n, tuple(allowed))
    if _pinned["state"] == state:
        return want
    tids = _pinned["tids"] if _pinned["state"] and _pinned["state"][0] == os.getpid() else ()
    for tid in tids:  # release the last pinning first
        _set_affinity(tid, allowed)
    _pinned["tids"] = ()
    if want:
        out = np.zeros(n, np.int64)
        _thread_ids.worker_tids(out)
        # one distinct worker per thread, none of them the caller (as under the OpenMP layer, where the
        # caller's thread is worker 0)
        if np.all(out > 0) and len(set(out.tolist())) == n and threading.get_native_id() not in out:
            _pinned["tids"] = tuple(int(t) for t in out)
            for tid, cpu in zip(_pinned["tids"], allowed):
                _set_affinity(tid, [cpu])
        else:
            want = False
    _pinned["state"] = state
    return want


def _set_affinity(tid: int, cpus) -> None:
    """Best effort: a worker that is gone or may not be moved is left as it is."""
    try:
        os.sched_setaffinity(tid, cpus)
    except OSError:
        pass
