import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sdmnn
from sdmnn import ParameterError
from sdmnn.errors import SdmnnError
from sdmnn.sdm import winding_number
from sdmnn.shapes import require_valid

FAMILIES = ["cochlea", "torus"]


def corners(family):
    return [dict(zip(family.names, c)) for c in itertools.product(*family.ranges.values())]


def assert_valid_solid(family, params, resolution=None):
    mesh = family.mesh(params, **({"resolution": resolution} if resolution else {}))
    assert mesh.is_watertight, params
    assert mesh.is_winding_consistent, params
    assert mesh.volume > 0, params
    lo, hi = family.grid.bounds
    assert np.all(mesh.bounds[0] >= lo + family.grid.spacing[0]) and np.all(mesh.bounds[1] <= hi - family.grid.spacing[0]), params
    # No self-intersection: just outside the surface the winding number is 0, just inside it is 1
    # (an overlap would give 1 outside or 2 inside somewhere).
    normals = mesh.vertex_normals
    step = 1e-3
    w_out = winding_number(mesh, mesh.vertices + step * normals)
    w_in = winding_number(mesh, mesh.vertices - step * normals)
    assert np.all(np.abs(w_out) < 0.5) and np.all(np.abs(w_in - 1) < 0.5), params


@pytest.mark.parametrize("name", FAMILIES)
def test_every_corner_of_the_box_gives_a_valid_solid(name):
    family = sdmnn.get_family(name)
    for params in corners(family):
        assert_valid_solid(family, params, resolution=(200, 24))


@pytest.mark.parametrize("name", FAMILIES)
def test_random_parameters_give_valid_solids(name):
    family = sdmnn.get_family(name)

    @settings(max_examples=12, deadline=None)
    @given(st.tuples(*[st.floats(lo, hi) for lo, hi in family.ranges.values()]))
    def check(values):
        assert_valid_solid(family, dict(zip(family.names, values)), resolution=(200, 24))

    check()


def test_cochlea_declares_the_posters_parameters(cochlea):
    assert cochlea.names == ("a", "alpha", "b", "phi")
    assert cochlea.ranges["a"] == (2.0, 5.0) and cochlea.ranges["b"] == (0.05, 0.25)
    assert np.isclose(cochlea.ranges["phi"][1], np.pi / 4)


def test_torus_mesh_volume_matches_the_analytic_volume(torus):
    p = torus.defaults
    mesh = torus.mesh(p, resolution=(512, 128))
    assert mesh.volume == pytest.approx(2 * np.pi**2 * p["R"] * p["r"] ** 2, rel=1e-3)


def test_cochlea_phi_changes_the_shape_at_the_apex(cochlea):
    # The section keeps its aspect ratio everywhere, so phi is visible even where the turns are tight.
    p = dict(cochlea.defaults, b=0.25)
    m0, m1 = cochlea.mesh(dict(p, phi=-0.7)), cochlea.mesh(dict(p, phi=0.7))
    apex = slice(-32 * 40 - 2, -2)  # the last 40 sections
    assert np.abs(m0.vertices[apex] - m1.vertices[apex]).max() > 1e-3


@pytest.mark.parametrize("bad, message", [
    ({"a": 7.1}, "a must lie in"),
    ({"a": float("nan")}, "finite"),
    ({"zeta": 1.0}, "unknown parameter"),
])
def test_bad_parameters_are_refused_with_one_sentence(cochlea, bad, message):
    with pytest.raises(ParameterError, match=message):
        cochlea.mesh({**cochlea.defaults, **bad})


def test_missing_parameter_is_refused(cochlea):
    with pytest.raises(ParameterError, match="missing parameter 'phi'"):
        cochlea.mesh({"a": 3, "alpha": 0.5, "b": 0.1})


def test_wrong_count_is_refused(cochlea):
    with pytest.raises(ParameterError, match="expected 4 parameters"):
        cochlea.mesh([3.0, 0.5])


def test_unknown_family_is_refused():
    with pytest.raises(sdmnn.SdmnnError, match="unknown family"):
        sdmnn.get_family("sphere")


def test_default_mesh_resolution_is_not_the_accuracy_bottleneck(cochlea):
    # the corner measured worst: widest base, fastest decay; against a 16x finer mesh
    p = {"a": 5.0, "alpha": 0.0, "b": 0.25, "phi": -np.pi / 4}
    coarse = sdmnn.exact_sdm(cochlea.mesh(p), cochlea.grid)
    fine = sdmnn.exact_sdm(cochlea.mesh(p, resolution=(1600, 128)), cochlea.grid)
    assert np.abs(coarse - fine).max() < 0.01  # mm: 1/20 of a 0.2 mm voxel


# --- families defined by users: define_family, files, modules, plug-ins, checks --------------------------------------

def _sphere_family(name, mesh=None, **kw):
    import trimesh

    return sdmnn.define_family(name, {"r": (0.5, 1.0), "x": (-1.0, 1.0)},
                               mesh or (lambda p: trimesh.creation.icosphere(2, p["r"]).apply_translation([p["x"], 0, 0])), **kw)


def test_define_family_computes_a_grid_that_covers_every_shape_of_the_box():
    fam = _sphere_family("ball", spacing=0.1)
    g = fam.grid
    assert g.spacing == (0.1, 0.1, 0.1) and all(n % 8 == 0 for n in g.shape)
    lo, hi = g.bounds
    for r, x in itertools.product((0.5, 0.75, 1.0), (-1.0, 0.3, 1.0)):
        b = fam.mesh({"r": r, "x": x}).bounds
        assert np.all(b[0] >= lo + 3 * 0.1) and np.all(b[1] <= hi - 3 * 0.1)  # a margin of voxels beyond every shape
    assert sdmnn.get_family("ball") is fam
    assert sdmnn.check_family(fam).ok


def test_defaults_are_the_middle_of_the_ranges_unless_given():
    assert _sphere_family("ball2").defaults == {"r": 0.75, "x": 0.0}
    assert _sphere_family("ball3", defaults={"x": 0.5}).defaults == {"r": 0.75, "x": 0.5}


@pytest.mark.parametrize("kwargs, message", [
    ({"ranges": {"r": (1.0, 1.0)}}, "low < high"),
    ({"ranges": {"r": (2.0, 1.0)}}, "low < high"),
    ({"ranges": {}}, "needs ranges"),
    ({"ranges": {"r": (0, float("nan"))}}, "finite"),
    ({"ranges": {"r": (0.5, 1.0)}, "defaults": {"r": 2.0}}, "must lie in"),
    ({"ranges": {"r": (0.5, 1.0)}, "units": {"q": "mm"}}, "not one of its parameters"),
    ({"name": "cochlea"}, "built-in"),
    ({"name": "Cochlea"}, "built-in"),
    ({"name": "a:b"}, "letters, digits"),
    ({"mesh": 3}, "must be a function"),
])
def test_bad_family_definitions_get_one_sentence(kwargs, message):
    args = {"name": "userfam", "ranges": {"r": (0.5, 1.0)}, "mesh": lambda p: None, **kwargs}
    with pytest.raises(sdmnn.FamilyError, match=message):
        sdmnn.define_family(args.pop("name"), args.pop("ranges"), args.pop("mesh"), **args)


def test_a_mesher_that_raises_or_returns_no_mesh_names_the_family_and_the_parameters():
    def broken(p):
        raise RuntimeError("no way")

    with pytest.raises(sdmnn.MeshError, match=r"broken family's mesher raised RuntimeError: no way \(at r=0.75"):
        _sphere_family("broken", broken).mesh({"r": 0.75, "x": 0})
    with pytest.raises(sdmnn.MeshError, match="must return a trimesh.Trimesh or"):
        _sphere_family("nomesh", lambda p: [1, 2]).mesh({"r": 0.75, "x": 0})
    V, F = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1.0]]), np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    assert _sphere_family("tetra", lambda p: (V, F)).mesh({"r": 0.75, "x": 0}).is_watertight


def test_get_family_loads_a_family_file_once_and_remembers_where_it_came_from(capsule_file):
    spec = f"{capsule_file}:CAPSULE"
    fam = sdmnn.get_family(spec)
    assert fam.name == "capsule" and fam.source == f"{capsule_file.resolve()}:CAPSULE" and len(fam.space) == 4
    assert sdmnn.get_family(spec) is fam and sdmnn.get_family("capsule") is fam and sdmnn.get_family(fam.ref) is fam


def test_a_family_file_runs_once_whatever_name_is_asked_of_it(tmp_path):
    path = tmp_path / "two.py"
    path.write_text("import sdmnn, trimesh\n"
                    "import builtins\n"
                    "builtins.two_py_runs = getattr(builtins, 'two_py_runs', 0) + 1\n"
                    "BALL = sdmnn.define_family('ballx', {'r': (0.5, 1.0)}, lambda p: trimesh.creation.icosphere(1, p['r']))\n"
                    "BOX = sdmnn.define_family('boxx', {'s': (0.5, 1.0)}, lambda p: trimesh.creation.box([p['s']] * 3))\n")
    import builtins

    ball, box = sdmnn.get_family(f"{path}:BALL"), sdmnn.get_family(f"{path}:BOX")
    assert builtins.two_py_runs == 1
    assert ball.source.endswith("two.py:BALL") and box.source.endswith("two.py:BOX")
    assert sdmnn.get_family("ballx") is ball and sdmnn.get_family("boxx") is box


def test_a_family_file_given_as_a_module_gets_a_hint(tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text("X = 1\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(sdmnn.FamilyError, match=r"No module named 'mine' \(a family file is named by its path: mine.py:NAME\)"):
        sdmnn.get_family("mine:X")


def test_get_family_loads_a_module_and_an_entry_point(tmp_path, monkeypatch):
    from importlib.metadata import EntryPoint

    from sdmnn.shapes import registry

    (tmp_path / "userfamilies.py").write_text("import sdmnn, trimesh\n"
                                              "RING = sdmnn.define_family('ring', {'R': (2.0, 3.0)}, "
                                              "lambda p: trimesh.creation.annulus(1.0, p['R'], 1.0))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert sdmnn.get_family("userfamilies:RING").source == "userfamilies:RING"
    plugin = EntryPoint(name="plugring", value="userfamilies:RING", group=registry.ENTRY_POINTS)
    monkeypatch.setattr(registry, "_entry_points", lambda: {"plugring": plugin})
    fam = sdmnn.get_family("plugring")
    assert fam.name == "ring" and fam.source == "userfamilies:RING"  # another process finds it by that
    assert "ring" in [f.name for f in sdmnn.families()]
    broken = EntryPoint(name="gone", value="userfamilies_gone:X", group=registry.ENTRY_POINTS)
    monkeypatch.setattr(registry, "_entry_points", lambda: {"plugring": plugin, "gone": broken})
    with pytest.raises(sdmnn.FamilyError, match="the family 'gone' registered by an installed package"):
        sdmnn.families()
    problems = []  # as `sdmnn families` lists them: the others, and a warning for the one that does not load
    assert {"cochlea", "torus", "ring"} <= {f.name for f in sdmnn.families(problems)}
    assert len(problems) == 1 and "userfamilies_gone:X" in problems[0]


@pytest.mark.parametrize("text, spec, message", [
    ("def f(:\n", "F", "syntax error at line 1"),
    ("X = 1\n", "NOPE", "has no NOPE"),
    ("X = 1\n", "X", "X is a int, not a family"),
    ("raise RuntimeError('boom')\n", "X", "raised RuntimeError while loading: boom"),
    ("import sdmnn\nX = sdmnn.define_family('q', {'a': (2, 1)}, print)\n", "X", "range of a must be finite with low < high"),
])
def test_bad_family_files_get_one_sentence_naming_the_file(tmp_path, text, spec, message):
    path = tmp_path / "fam.py"
    path.write_text(text)
    with pytest.raises(sdmnn.FamilyError, match=message) as e:
        sdmnn.get_family(f"{path}:{spec}")
    assert "fam.py" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(sdmnn.FamilyError, match="does not exist"):
        sdmnn.get_family(f"{tmp_path}/missing.py:X")


def test_check_family_reports_open_inverted_self_intersecting_and_off_grid_shapes():
    import trimesh

    def shape(p):
        m = trimesh.creation.icosphere(2, 1.0)
        if p["k"] < 1:
            return m
        if p["k"] < 2:  # open: a face missing
            return trimesh.Trimesh(m.vertices, m.faces[1:], process=False)
        if p["k"] < 3:  # inverted
            return trimesh.Trimesh(m.vertices, m.faces[:, ::-1], process=False)
        if p["k"] < 4:  # two spheres that cross each other, as one mesh
            return trimesh.util.concatenate([m, m.copy().apply_translation([0.6, 0, 0])])
        return m.apply_translation([50.0, 0, 0])  # far off the grid

    fam = sdmnn.define_family("faulty", {"k": (0.0, 4.5)}, shape, grid=sdmnn.Grid((16, 16, 16), (0.25,) * 3, (-1.9,) * 3))
    from sdmnn.shapes.check import check_shape

    problems = {k: check_shape(fam, np.array([k])) for k in (0.5, 1.5, 2.5, 3.5, 4.5)}
    assert problems[0.5] == ""
    assert "open" in problems[1.5] or "edges" in problems[1.5]
    assert "inverted" in problems[2.5]
    assert "intersect" in problems[3.5]
    assert "leaves the grid" in problems[4.5]
    result = sdmnn.check_family(fam, samples=8)
    assert not result.ok and "k=4.5" in result.report() and result.checked == 11
    with pytest.raises(sdmnn.FamilyError, match="fails `sdmnn families check`"):
        require_valid(fam)


def test_the_check_reports_a_grid_over_the_memory_budget_or_one_that_cannot_be_computed(monkeypatch):
    """A family whose every shape is fine can still be unusable: its grid (here 0.1 mm over a 100 mm ball) is over
    the memory budget; a mesher giving NaN at some shapes leaves no grid to compute, and the check lists those
    shapes rather than failing on the grid."""
    import trimesh

    big = sdmnn.define_family("bigball", {"r": (1.0, 50.0)}, lambda p: trimesh.creation.icosphere(1, p["r"]), spacing=0.1)
    monkeypatch.setenv("SDMNN_MAX_BYTES", str(2**30))
    result = sdmnn.check_family(big, samples=2)
    assert not result.ok and result.usable and "over the budget" in result.report()  # usable on another grid

    def nan_at_large(p):
        m = trimesh.creation.icosphere(1, 1.0)
        return trimesh.Trimesh(m.vertices * (np.nan if p["r"] > 1.5 else 1.0), m.faces, process=False)

    import sdmnn.shapes.family as family_module

    computed, real = [], family_module.auto_grid
    monkeypatch.setattr(family_module, "auto_grid", lambda *a, **k: computed.append(1) or real(*a, **k))
    nan = sdmnn.define_family("nanball", {"r": (1.0, 2.0)}, nan_at_large)
    result = sdmnn.check_family(nan, samples=4)
    assert "no grid can be computed" in result.grid_problem and result.problems and not result.usable
    with pytest.raises(SdmnnError, match="no grid can be computed"):
        nan.grid
    assert len(computed) == 1  # the failure is kept, not computed again for each use
    assert all("non-finite" in why or "NaN" in why for _, why in result.problems)
