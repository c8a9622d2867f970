"""Datasets of (parameters, SDM) pairs: designs, a resumable Zarr store, parallel generation, and an
online stream of fresh random pairs.

Store layout (Zarr v3): ``params`` (N, d) float64 in the family's units; ``sdm`` (N, nx, ny, nz)
float32 in mm, one compressed chunk per sample; ``done`` (N,) bool, chunked by task so that each task
owns its chunk. Attributes under ``"sdmnn"`` say family, parameters, grid, design, seed and versions.
Generation is split into idempotent tasks (index ranges); a sample whose ``done`` flag is set is never
computed again, so a killed run resumes where it stopped.
"""
from __future__ import annotations

import itertools
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .errors import DatasetError, FileError, ParameterError, SdmnnError
from .grid import Grid
from .shapes import Family, get_family, require_valid
from .shapes.registry import require_portable, stored_family

FORMAT = 1
TASK_SIZE = 16


# ---------------------------------------------------------------------------------------------
# designs
# ---------------------------------------------------------------------------------------------

def design_points(spec: str, family: Family, seed: int = 0, exclude: np.ndarray | None = None) -> np.ndarray:
    """Parameter vectors (N, d) of a design, in the family's units.

    ``spec``: ``grid:K`` (full factorial, K levels per parameter, ends included), ``sobol:N``
    (scrambled Sobol, scipy.stats.qmc), ``random:N`` (uniform), or ``csv:PATH`` (a header row of
    parameter names, one vector per row). A grid, sobol or random design may be restricted to sub-ranges of
    some parameters: ``sobol:512 within a=2:3.3,b=0.05:0.12`` (more samples where a model needs them; the
    others keep the family's ranges). ``exclude``: drop points equal to any of these (held-out splits).
    """
    space = family.space
    within = ""
    if not spec.startswith("csv:"):  # a csv path may itself contain " within "
        spec, _, within = spec.partition(" within ")
    low, high = _within(within, family) if within else (space.low, space.high)
    kind, _, arg = spec.partition(":")
    if kind == "csv":
        points = _read_csv(Path(arg), space)
    else:
        try:
            n = int(arg)
        except ValueError:
            raise SdmnnError(f"design must be grid:K, sobol:N, random:N or csv:PATH, got {spec!r}") from None
        if n < 1:
            raise SdmnnError(f"the design size must be >= 1, got {spec!r}")
        if kind == "grid":
            if n < 2:
                raise SdmnnError(f"a grid design needs at least 2 levels, got {spec!r}")
            levels = [np.linspace(lo, hi, n) for lo, hi in zip(low, high)]
            points = np.array(list(itertools.product(*levels)))
        elif kind == "sobol":
            from scipy.stats import qmc

            unit = qmc.Sobol(len(space), scramble=True, seed=seed).random(n)
            points = low + unit * (high - low)
        elif kind == "random":
            unit = np.random.default_rng(seed).random((n, len(space)))
            points = low + unit * (high - low)
        else:
            raise SdmnnError(f"unknown design {kind!r}; the designs are grid:K, sobol:N, random:N and csv:PATH")
    for i, row in enumerate(points):
        try:
            space.vector(row)
        except ParameterError as e:
            raise ParameterError(f"design point {i} is outside the {family.name} family's ranges: {e}") from None
    if exclude is not None and len(exclude):
        scale = space.high - space.low
        d = np.abs((points[:, None, :] - np.asarray(exclude)[None]) / scale).max(-1).min(1)
        points = points[d > 1e-9]
    return points


def _within(text: str, family: Family) -> tuple[np.ndarray, np.ndarray]:
    """``"a=2:3.3,b=0.05:0.12"`` -> (low, high) of the design: these sub-ranges, the family's ranges elsewhere."""
    space = family.space
    low, high = space.low.astype(float).copy(), space.high.astype(float).copy()
    seen = set()
    for item in text.split(","):
        name, sep, bounds = (t.strip() for t in item.partition("="))
        lo, colon, hi = bounds.partition(":")
        if not sep or not colon or name not in space.names:
            raise SdmnnError(f"--within takes NAME=LOW:HIGH for {family.name} parameters ({', '.join(space.names)}), "
                             f"comma-separated; got {item.strip()!r}")
        if name in seen:
            raise SdmnnError(f"--within names {name} twice; give each parameter once")
        seen.add(name)
        try:
            lo, hi = float(lo), float(hi)
        except ValueError:
            raise SdmnnError(f"--within: {name}'s bounds must be numbers, got {bounds!r}") from None
        i = list(space.names).index(name)
        slack = 1e-9 * (space.high[i] - space.low[i])  # a printed bound, rounded, still counts as the family's
        if not (space.low[i] - slack <= lo < hi <= space.high[i] + slack):
            raise SdmnnError(f"--within: {name}={lo:g}:{hi:g} must be an increasing range inside the family's "
                             f"{float(space.low[i]):g}:{float(space.high[i]):g}")
        low[i], high[i] = max(lo, space.low[i]), min(hi, space.high[i])
    return low, high


def canonical_design(spec: str, family: Family) -> str:
    """``spec`` with its ``within`` part in one spelling (the family's parameter order, numbers as Python writes them),
    so that a rerun that words the same ranges otherwise resumes the same store."""
    design, sep, within = spec.partition(" within ")
    if not sep or spec.startswith("csv:"):
        return spec
    low, high = _within(within, family)
    space, text = family.space, lambda v: repr(float(v)).removesuffix(".0")
    given = {item.partition("=")[0].strip() for item in within.split(",")}
    return f"{design} within " + ",".join(f"{n}={text(low[i])}:{text(high[i])}" for i, n in enumerate(space.names) if n in given)


def _read_csv(path: Path, space) -> np.ndarray:
    import csv

    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise FileError(f"cannot read the design file {path}: {e.strerror}") from None
    if not rows or [c.strip() for c in rows[0]] != list(space.names):
        raise SdmnnError(f"{path}: the first row must name the parameters {','.join(space.names)}")
    try:
        return np.array([[float(v) for v in r] for r in rows[1:] if r], dtype=float).reshape(-1, len(space))
    except ValueError as e:
        raise SdmnnError(f"{path}: every value must be a number ({e})") from None


# ---------------------------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------------------------

def _metadata(family: Family, grid: Grid, design: str, seed: int, count: int, task_size: int) -> dict:
    import numpy, trimesh, zarr

    return {
        "format": FORMAT, "family": family.name, "family_source": family.source, "parameters": family.space.to_dict(),
        "grid": grid.to_dict(), "design": design, "seed": seed, "count": count,
        "task_size": task_size, "units": "mm, negative inside",
        "versions": {"sdmnn": __version__, "numpy": numpy.__version__, "trimesh": trimesh.__version__, "zarr": zarr.__version__},
    }

_IDENTITY = ("format", "family", "parameters", "grid", "design", "seed", "count", "task_size")


def _open_group(path, mode="r"):
    import zarr

    path = Path(path)
    if mode == "r" and not path.exists():
        raise FileError(f"{path}: no such dataset")
    try:
        group = zarr.open_group(str(path), mode=mode)
        meta = dict(group.attrs).get("sdmnn")
    except Exception as e:  # zarr raises several kinds on a damaged store
        raise DatasetError(f"{path}: not a readable sdmnn dataset ({type(e).__name__}: {e})") from None
    return group, meta


def create_store(path, family: Family, grid: Grid, design: str, seed: int, points: np.ndarray, task_size: int = TASK_SIZE):
    """Create the store, or reopen it when it exists with the same metadata (to resume)."""
    import zarr

    meta = _metadata(family, grid, design, seed, len(points), task_size)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileError(f"cannot create the folder {path.parent}: {e.strerror}") from None
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):  # (an empty folder made for it: a new store)
        if not (path / "zarr.json").is_file():
            raise DatasetError(f"{path} exists and is not an sdmnn dataset; choose another output path")
        group, old = _open_group(path, "r+")
        if old is None:
            raise DatasetError(f"{path} exists and is not an sdmnn dataset; choose another output path")
        diff = [k for k in _IDENTITY if old.get(k) != meta[k]]
        if diff:
            raise DatasetError(f"{path} exists with other metadata ({', '.join(diff)} differ); choose another output path or delete it")
        if old.get("family_source") is None and meta["family_source"]:  # now resumed from a file: workers can find it
            group.attrs["sdmnn"] = {**old, "family_source": meta["family_source"]}
        return group
    if not path.parent.exists():
        raise FileError(f"cannot write {path}: the folder {path.parent} does not exist")
    from .io import atomic_folder

    with atomic_folder(path) as tmp:  # made beside it, moved into place whole: an interrupt leaves no half-made store
        group = zarr.open_group(str(tmp), mode="w")
        n, shape = len(points), grid.shape
        group.create_array("params", data=np.asarray(points, dtype=np.float64), chunks=(max(n, 1), len(family.space)))
        group.create_array("sdm", shape=(n, *shape), chunks=(1, *shape), dtype="float32", fill_value=np.nan)
        group.create_array("done", shape=(n,), chunks=(task_size,), dtype="bool", fill_value=False)
        group.attrs["sdmnn"] = meta
    return zarr.open_group(str(path), mode="r+")


def compute_sample(family: Family, grid: Grid, params) -> np.ndarray:
    """The exact SDM of one parameter vector on ``grid`` (float32, mm)."""
    from .sdm import exact_sdm

    return exact_sdm(family.mesh(params), grid)


#: In a local pool's worker: set when the run is interrupted (``_execute``), so that a task stops between samples.
_STOP = None


def _worker_init(stop) -> None:
    """A local pool's worker: the interrupt (Ctrl-C reaches the whole process group) is the main process's to
    handle; it sets ``stop``, which the worker's task reads between samples."""
    import signal

    global _STOP
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _STOP = stop


def run_task(path: str, start: int, stop: int, threads: int | None = None) -> dict:
    """Compute and write samples [start, stop) that are not done yet. Idempotent; safe to re-run.

    Returns {"written": n, "failed": [(index, message), ...]}; one failing sample does not stop the others.
    """
    from .runtime import keep_freed_memory, set_threads

    keep_freed_memory()
    if threads:
        set_threads(threads)
    group, meta = _open_group(path, "r+")
    family, grid = stored_family(meta, path), Grid.from_dict(meta["grid"])
    done = group["done"][start:stop]
    params = group["params"][start:stop]
    written, failed = 0, []
    for offset in np.flatnonzero(~done):
        if _STOP is not None and _STOP.is_set():  # the run was interrupted: what is written stays, a rerun finishes
            break
        i = start + int(offset)
        try:
            sdm = compute_sample(family, grid, params[offset])
        except Exception as e:  # report and go on: the rest of the task still lands
            failed.append((i, f"{type(e).__name__}: {e}"))
            continue
        group["sdm"][i] = sdm
        group["done"][i] = True  # after the data: a sample is never marked done before it is written
        written += 1
    return {"written": written, "failed": failed, "count": stop - start}


@dataclass
class MakeSummary:
    path: str
    count: int
    written: int
    skipped: int
    failed: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


def make_dataset(path, family, design: str, seed: int = 0, workers: int = 1, scheduler: str | None = None,
                 grid: Grid | None = None, task_size: int = TASK_SIZE, exclude=None, progress: bool = True) -> MakeSummary:
    """Generate (or finish) a dataset of exact SDMs for a design, with a process pool or a Dask cluster."""
    family = get_family(family)
    require_valid(family)
    if workers > 1 or scheduler:
        require_portable(family)
    grid = grid or family.grid
    grid.check_memory()
    design = canonical_design(design, family)
    points = design_points(design, family, seed, exclude)
    group = create_store(path, family, grid, design, seed, points, task_size)
    done = group["done"][:]
    n = len(points)
    tasks = [(s, min(s + task_size, n)) for s in range(0, n, task_size) if not done[s : s + task_size].all()]
    summary = MakeSummary(str(path), n, 0, int(done.sum()))
    from tqdm.auto import tqdm

    bar = tqdm(total=n, initial=int(done.sum()), unit="sample", disable=not progress, smoothing=0.1, desc=f"{family.name} {design}")
    t0 = time.perf_counter()
    try:
        for result in _execute(str(path), tasks, workers, scheduler):
            summary.written += result["written"]
            summary.failed += result["failed"]
            bar.update(result["count"])
    except SdmnnError:
        raise
    except Exception as e:  # a worker process killed (out of memory, a signal) or a lost cluster
        raise DatasetError(f"a worker died ({type(e).__name__}: {e}); the samples already written are kept, "
                           "rerun the same command to finish") from None
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _execute(path, tasks, workers, scheduler):
    """Run the tasks serially, on a local process pool, or on a Dask cluster; yield results as they finish."""
    if scheduler:
        from distributed import Client, as_completed as dask_completed

        try:
            client = Client(scheduler, timeout="10s")
        except OSError as e:
            raise SdmnnError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
        with client:
            futures = client.map(run_task, [path] * len(tasks), [s for s, _ in tasks], [e for _, e in tasks],
                                 threads=1, pure=False)
            for future in dask_completed(futures):
                yield future.result()
    elif workers <= 1:
        for s, e in tasks:
            yield run_task(path, s, e)
    else:
        # spawn, not fork: numba's thread pool must not be inherited half-initialised
        import signal

        from .runtime import can_handle_signals

        context = mp.get_context("spawn")
        stop = context.Event()
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(stop,)) as pool:
            # the workers start ignoring Ctrl-C (inherited, before they import anything); this process's Ctrl-C waits
            # until every task is submitted, so that an interrupt finds them all to cancel
            before = signal.signal(signal.SIGINT, signal.SIG_IGN) if can_handle_signals() else None
            try:
                futures = [pool.submit(run_task, path, s, e, 1) for s, e in tasks]
            finally:
                if before is not None:
                    signal.signal(signal.SIGINT, before)
            try:
                for future in as_completed(futures):
                    yield future.result()
            except BaseException:  # interrupted (or a task failed): the tasks not begun are dropped, those running
                stop.set()  # stop after their current sample, and the pool's exit waits for that alone
                pool.shutdown(wait=False, cancel_futures=True)
                raise


def dataset_info(path) -> dict:
    """The store's metadata plus how many samples are written."""
    group, meta = _open_group(path)
    if meta is None:
        raise DatasetError(f"{path}: not an sdmnn dataset (no metadata)")
    done = group["done"][:]
    return {**meta, "complete": int(done.sum()), "missing": int((~done).sum())}


def dataset_params(path) -> np.ndarray:
    """The (count, d) parameter vectors of a store's design, in the family's units (computed or not)."""
    group, meta = _open_group(path)
    if meta is None:
        raise DatasetError(f"{path}: not an sdmnn dataset (no metadata)")
    return np.asarray(group["params"][:])


# ---------------------------------------------------------------------------------------------
# torch-ready views
# ---------------------------------------------------------------------------------------------

class SDMDataset:
    """(normalised params (d,), SDM (nx, ny, nz) in mm) pairs of a store, as float32 torch tensors.

    Only complete samples are served. Everything is read into memory at open (a 5^4 cochlea set at
    64x56x32 is 290 MB), so training never waits on disk.
    """

    def __init__(self, path, family: str | None = None, grid: Grid | None = None):
        import torch

        group, meta = _open_group(path)
        if meta is None:
            raise DatasetError(f"{path}: not an sdmnn dataset (no metadata)")
        if family is not None and meta["family"] != get_family(family).name:
            raise DatasetError(f"{path} holds the {meta['family']} family, not {get_family(family).name}")
        self.family = stored_family(meta, path)
        self.grid = Grid.from_dict(meta["grid"])
        if grid is not None and grid != self.grid:
            raise DatasetError(f"{path} is on grid {self.grid.to_dict()}, not the expected {grid.to_dict()}")
        if meta["parameters"] != self.family.space.to_dict():
            raise DatasetError(f"{path} was made with other parameter ranges than the {self.family.name} family has now")
        self.meta = meta
        done = group["done"][:]
        self.index = np.flatnonzero(done)
        self.params = group["params"][:][self.index]
        try:
            sdm = group["sdm"]
            self.sdm = torch.from_numpy(np.stack([sdm[int(i)] for i in self.index])) if len(self.index) else torch.empty(0, *self.grid.shape)
        except Exception as e:
            raise DatasetError(f"{path}: a sample marked complete cannot be read ({type(e).__name__}: {e}); "
                               "the store is corrupted or truncated") from None
        if torch.isnan(self.sdm).any():
            raise DatasetError(f"{path}: a sample marked complete holds NaN; the store is corrupted")
        self.x = torch.from_numpy(self.family.space.normalise(self.params).astype(np.float32))

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        return self.x[i], self.sdm[i]


def open_dataset(path, family: str | None = None, grid: Grid | None = None) -> SDMDataset:
    """A torch-ready dataset: ``ds[i] -> (params normalised to [-1, 1], SDM in mm)``."""
    return SDMDataset(path, family, grid)
