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


#: A user family in a file of its own, as a researcher writes one (4 parameters, a computed grid).
CAPSULE_FILE = '''
import trimesh
import sdmnn


def capsule(p):
    m = trimesh.creation.capsule(height=p["length"], radius=p["radius"], count=[16, 16])
    m.apply_transform(trimesh.transformations.rotation_matrix(p["tilt"], [1, 0, 0]))
    m.apply_translation([p["shift"], 0, 0])
    return m


CAPSULE = sdmnn.define_family("capsule", {"length": (1.0, 3.0), "radius": (0.5, 1.0), "tilt": (-0.5, 0.5), "shift": (-0.5, 0.5)},
                              capsule, units={"length": "mm", "radius": "mm", "tilt": "rad", "shift": "mm"}, spacing=0.25,
                              description="a tilted, shifted capsule")
'''


@pytest.fixture
def capsule_file(tmp_path):
    path = tmp_path / "capsule.py"
    path.write_text(CAPSULE_FILE)
    return path
