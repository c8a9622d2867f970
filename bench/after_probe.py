"""What a batch-1 prediction follows (a one-off probe, not a bench section): ``python bench/after_probe.py [N]``. The
shipped model (default precision, 2 threads) predicts the default cochlea right after another prediction, right after
an exact SDM of it, and after 40 ms asleep, N times each in turn (default 60); printed: the median of each, and of the
exact SDM. Then a control without torch: 20 numpy matrix-vector products (256 x 256, float32) right after another 20 and
after 40 ms asleep. The nn bench times every call after an exact SDM, Table 1 each method's calls back to back."""
from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch

import sdmnn


def main(n: int = 60) -> None:
    torch.set_num_threads(2)
    model = sdmnn.load_model(threads=2)
    params = model.family.defaults
    mesh = model.family.mesh(params)

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    predict = lambda: model.predict(params)  # noqa: E731
    exact = lambda: sdmnn.exact_sdm(mesh, model.grid)  # noqa: E731
    for _ in range(10):
        predict()
        exact()
    times = {"after a prediction": [], "exact SDM": [], "after an exact SDM": [], "after 40 ms asleep": []}
    for _ in range(n):
        predict()
        times["after a prediction"].append(timed(predict))
        times["exact SDM"].append(timed(exact))
        times["after an exact SDM"].append(timed(predict))
        time.sleep(0.04)
        times["after 40 ms asleep"].append(timed(predict))
    print(f"{model.precision}, 2 threads, median of {n}:")
    for name, values in times.items():
        print(f"  {name}: {1e3 * statistics.median(values):.2f} ms")

    rng = np.random.default_rng(0)
    A, v = rng.random((256, 256), np.float32), rng.random(256, np.float32)

    def products():
        for _ in range(20):
            A @ v

    control = {"after another 20": [], "after 40 ms asleep": []}
    for _ in range(n):
        products()
        control["after another 20"].append(timed(products))
        time.sleep(0.04)
        control["after 40 ms asleep"].append(timed(products))
    print("control, 20 numpy matrix-vector products (256 x 256), median of {n}:".format(n=n))
    for name, values in control.items():
        print(f"  {name}: {1e6 * statistics.median(values):.0f} us")


if __name__ == "__main__":
    main(*[int(a) for a in sys.argv[1:2]])
