"""The online stream: reproducible, usable through a DataLoader, and leaving no process behind."""
import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from sdmnn import Grid
from sdmnn.stream import OnlineSDMs

COARSE = Grid((16, 14, 8), (0.8, 0.8, 0.8), (-5.4, -4.9, -1.7))  # the cochlea box, coarsely


def test_online_stream_is_deterministic_whatever_the_workers():
    a = OnlineSDMs("cochlea", COARSE, seed=3, workers=1)
    b = OnlineSDMs("cochlea", COARSE, seed=3, workers=2)
    for (xa, ya), (xb, yb), _ in zip(a, b, range(3)):
        assert np.array_equal(xa.numpy(), xb.numpy()) and np.array_equal(ya.numpy(), yb.numpy())


def test_a_dataloader_batches_the_stream():
    loader = torch.utils.data.DataLoader(OnlineSDMs("cochlea", COARSE, seed=3), batch_size=2)
    x, y = next(iter(loader))
    assert x.shape == (2, 4) and tuple(y.shape) == (2, *COARSE.shape)
    first = next(iter(OnlineSDMs("cochlea", COARSE, seed=3)))
    assert torch.equal(x[0], first[0]) and torch.equal(y[0], first[1])  # the same seeded sequence


def test_workers_stop_when_the_consumer_fails():
    before = set(mp.active_children())
    with pytest.raises(ZeroDivisionError):
        for i, _ in enumerate(OnlineSDMs("cochlea", COARSE, seed=0, workers=2)):
            assert set(mp.active_children()) - before  # the workers run while it is consumed
            1 / 0
    assert not set(mp.active_children()) - before


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.exists("/proc"), reason="reads /proc")
def test_workers_end_when_the_consumer_process_is_killed(tmp_path):
    script = textwrap.dedent(f"""
        import multiprocessing as mp, os, signal
        from sdmnn import Grid
        from sdmnn.stream import OnlineSDMs
        if __name__ == "__main__":
            stream = iter(OnlineSDMs("cochlea", Grid({COARSE.shape}, {COARSE.spacing}, {COARSE.origin}), workers=2))
            next(stream)
            print(" ".join(str(p.pid) for p in mp.active_children()), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    (tmp_path / "consumer.py").write_text(script)
    r = subprocess.run([sys.executable, "consumer.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    pids = [int(p) for p in r.stdout.split()]
    assert len(pids) >= 2, r.stderr
    deadline = time.time() + 10
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)
