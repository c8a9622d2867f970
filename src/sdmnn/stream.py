"""An endless stream of fresh random (parameters, SDM) pairs computed in background processes, for training
on data no static store holds: a torch ``IterableDataset``.

Sample i of a stream depends only on (seed, i), so a stream is reproducible whatever the number of workers.
The workers are ``spawn``-ed processes: a script that iterates a stream must guard its top level with
``if __name__ == "__main__":`` (as for any ``multiprocessing`` code under spawn), since each worker imports
the script's main module again. They stop when the consumer stops iterating (the iterator is closed or
collected) and, should the consumer's process die, within a second of it.
"""
from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import threading
import time
from collections import deque

import numpy as np
import torch

from .dataset import compute_sample
from .grid import Grid
from .shapes import get_family
from .shapes.registry import require_portable

#: How often (seconds) a worker checks that the process that started it is still there.
PARENT_CHECK_SECONDS = 0.5


def _sample(family, grid: Grid, seed: int, index: int):
    family = get_family(family)
    rng = np.random.default_rng([seed, index])
    vector = family.space.low + rng.random(len(family.space)) * (family.space.high - family.space.low)
    return vector, compute_sample(family, grid, vector)


def _worker_init(parent: int):
    from .runtime import keep_freed_memory, set_threads

    keep_freed_memory()
    set_threads(1)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int):
    """End this worker once the process that started it is gone (killed, crashed), so none is left behind."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)


class OnlineSDMs(torch.utils.data.IterableDataset):
    """Fresh random (params normalised to [-1, 1] (d,), SDM in mm (nx, ny, nz)) pairs as float32 tensors,
    computed by ``workers`` background processes, ``prefetch`` samples ahead.

    Iterate it directly or through ``torch.utils.data.DataLoader(stream, batch_size=B)``; with DataLoader
    workers, each takes every n-th sample of the same seeded sequence.
    """

    def __init__(self, family, grid: Grid | None = None, seed: int = 0, workers: int = 1, prefetch: int | None = None,
                 start: int = 0):
        self.family = get_family(family)
        require_portable(self.family)  # the samples are computed in worker processes
        self.grid = grid or self.family.grid
        self.seed, self.workers, self.start = seed, max(1, workers), start
        self.prefetch = prefetch or 2 * self.workers

    def _indices(self):
        info = torch.utils.data.get_worker_info()
        if info is None:
            return itertools.count(self.start)
        return itertools.count(self.start + info.id, info.num_workers)

    def __iter__(self):
        indices = self._indices()
        pool = mp.get_context("spawn").Pool(self.workers, initializer=_worker_init, initargs=(os.getpid(),))
        try:
            pending = deque(self._submit(pool, next(indices)) for _ in range(self.prefetch))
            while True:
                vector, sdm = pending.popleft().get()
                pending.append(self._submit(pool, next(indices)))
                x = torch.from_numpy(self.family.space.normalise(vector).astype(np.float32))
                yield x, torch.from_numpy(sdm)
        finally:  # the consumer stopped (close, an exception, garbage collection): so do the workers
            pool.terminate()
            pool.join()

    def _submit(self, pool, index):
        return pool.apply_async(_sample, (self.family.ref, self.grid, self.seed, index))
