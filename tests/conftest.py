import numpy as np
import pytest
import trimesh

import sdmnn


@pytest.fixture(scope="session")
def torus():
    return sdmnn.get_family("torus")


@pytest.fixture(scope="session")
def cochlea():
    return sdmnn.get_family("cochlea")


@pytest.fixture(scope="session")
def small_grid():
    return sdmnn.Grid((40, 40, 40), (0.3, 0.3, 0.3), (-5.85, -5.85, -5.85))


def box_mesh(size=2.0):
    return trimesh.creation.box(extents=(size, size, size))


@pytest.fixture
def rng():
    return np.random.default_rng(0)
