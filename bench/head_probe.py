"""A temporal-bone-like CT about a cochlea (a one-off probe, not a bench section): ``python bench/head_probe.py``.
A CT-like cochlea phantom (a 4x finer mesh, partial volume; fluid 0, bone 1800 HU) in a 99 x 99 x 40 mm head-like
volume on 0.33 x 0.33 x 0.5 mm voxels, oblique with a flip, at scanner-like world coordinates: air outside the head,
scalp and brain 40 HU, skull, petrous and mastoid bone 1800 HU, the middle ear's air beyond a plane 0.7 mm from the
cochlea, the ear canal, two ossicles, 14 mastoid air cells; blurred 0.25 mm, noise 80 HU, clipped at -1024, padded
-3024 outside a circular field of view (int16). The cochlea is turned far from the model's orientation. Fitted with
its pose (hybrid) with no hint, with ``centre`` 1.6 mm from the cochlea, and with only the voxels within 6.5 mm of that
point (``radius``; with the default window, and with every voxel); printed: the fitted surface's mean distance to the true one,
R^2, whether it warned, and the time. (Built by a walk-through of the default window.)"""
import time
import warnings

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

import sdmnn
from sdmnn.fitting import fit
from sdmnn.phantom import make_phantom, surface_distances, truth_mesh

PARAMS = {"a": 3.3, "alpha": 0.55, "b": 0.13, "phi": 0.15}
SPACING = (0.33, 0.33, 0.5)
SHAPE = (300, 300, 80)          # 99 x 99 x 40 mm, circular FOV of 99 mm in the i-j plane
SHIFT = np.array([-38.5, 21.7, -142.3])  # scanner-like world coordinates
NOISE, BONE, FLUID, SOFT, AIR = 80.0, 1800.0, 0.0, 40.0, -1000.0


def cochlea_rotvec():
    # model z (the modiolus, base -> apex) points lateral (-x), anterior (-y), inferior (-z), after a 30 deg twist
    v = np.array([-0.7, -0.6, -0.3]); v /= np.linalg.norm(v)
    r_align, _ = Rotation.align_vectors([v], [[0, 0, 1]])
    r = r_align * Rotation.from_euler("z", 30, degrees=True)
    return np.degrees(r.as_rotvec())


def oblique():
    return Rotation.from_euler("xz", [15, 6], degrees=True).as_matrix()


def build():
    D = oblique() @ np.diag([1, -1, 1])  # oblique, with a flip
    clean, pgrid, truth = make_phantom("cochlea", PARAMS, kind="ct", intensities=(FLUID, BONE), noise=0.0,
                                       spacing=SPACING, rotate=cochlea_rotvec(), margin=1.5, direction=D)
    frac = np.clip((BONE - clean) / (BONE - FLUID), 0, 1)
    # shift the world
    pose = np.array(truth["pose"]); pose[:3, 3] += SHIFT
    truth["pose"] = pose.tolist(); truth["centre_mm"] = (np.array(truth["centre_mm"]) + SHIFT).tolist()
    p0 = np.array(pgrid.origin) + SHIFT
    mesh = truth_mesh(truth)
    C = mesh.vertices.mean(0)
    s = np.array(SPACING); N = np.array(SHAPE)
    F = C + np.array([-8.0, 6.0, 2.0])  # FOV centre
    u = D.T @ (F - p0) / s
    o = np.round(u - (N - 1) / 2).astype(int)
    origin = p0 + D @ (o * s)
    grid = sdmnn.Grid(tuple(SHAPE), tuple(SPACING), tuple(origin), D)
    P = grid.points().reshape(*SHAPE, 3)  # world mm
    X = P - C
    vol = np.full(SHAPE, SOFT, np.float32)

    def ell(centre, axes, R=np.eye(3)):
        q = (P - centre) @ R
        return ((q / np.asarray(axes)) ** 2).sum(-1) < 1

    H = C + np.array([42, 10, 10])
    vol[~ell(H, (75, 95, 90))] = AIR
    vol[ell(H, (71, 91, 86)) & ~ell(H, (65, 85, 80))] = BONE  # skull
    u_pet = np.array([1, -1, 0]) / np.sqrt(2)
    Rp = np.stack([u_pet, np.array([1, 1, 0]) / np.sqrt(2), [0, 0, 1]], axis=1)
    vol[ell(C + 6 * u_pet, (26, 10, 9), Rp)] = BONE      # petrous
    vol[ell(C + np.array([-10, 3, 0]), (14, 12, 10))] = BONE  # tympanic / squamous temporal bone
    vol[ell(C + np.array([-18, 18, -5]), (12, 14, 14))] = BONE  # mastoid
    # middle ear: half-ellipsoid beyond a plane GAP lateral of the cochlea's lateral-most point
    xl = mesh.vertices[:, 0].min()
    gap = 0.7
    plane = xl - gap
    me = (P[..., 0] <= plane) & ((((P[..., 0] - plane) / 6.5) ** 2 + ((X[..., 1] - 1) / 6) ** 2 + ((X[..., 2]) / 7) ** 2) < 1)
    vol[me] = AIR
    # external auditory canal (air) from the middle ear out through the skin
    eac = (P[..., 0] < plane - 5) & (((X[..., 1] - 2) ** 2 + (X[..., 2] - 1) ** 2) < 3.5 ** 2)
    vol[eac] = AIR
    # ossicles in the middle ear
    vol[ell(np.array([plane - 3.5, C[1] - 1, C[2] + 2.5]), (1.0, 1.5, 2.5))] = 1500
    vol[ell(np.array([plane - 3.0, C[1] + 2, C[2] + 3.0]), (0.8, 1.2, 2.0))] = 1500
    # mastoid air cells
    rng = np.random.default_rng(5)
    cells = []
    while len(cells) < 14:
        c = C + np.array([-18, 18, -5]) + rng.uniform(-1, 1, 3) * np.array([9, 10, 10])
        r = rng.uniform(1.0, 3.0)
        if np.linalg.norm(c - C) - r > 7:
            cells.append((c, r))
            vol[np.linalg.norm(P - c, axis=-1) < r] = AIR
    # partial volume of every structure
    vol = gaussian_filter(vol, 0.25 / s, truncate=3.0, mode="nearest")
    # the cochlea (fluid), from the phantom's clean partial volume
    blk = tuple(slice(-o[k], -o[k] + pgrid.shape[k]) for k in range(3))
    assert all(-o[k] >= 0 and -o[k] + pgrid.shape[k] <= SHAPE[k] for k in range(3))
    sub = vol[blk]
    vol[blk] = sub * (1 - frac) + FLUID * frac
    vol += NOISE * np.random.default_rng(11).standard_normal(SHAPE).astype(np.float32)
    ii, jj = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    fov = ((ii - (SHAPE[0] - 1) / 2) * s[0]) ** 2 + ((jj - (SHAPE[1] - 1) / 2) * s[1]) ** 2 <= (SHAPE[0] * s[0] / 2) ** 2
    hu = np.maximum(np.round(vol), -1024).astype(np.int32)  # scanners clip at -1024
    return np.where(fov[..., None], hu, -3024).astype(np.int16), grid, truth


def main():
    image, grid, truth = build()
    mesh = truth_mesh(truth)
    hint = mesh.vertices.mean(0) + np.array([1.0, -1.0, 0.5])  # 1.6 mm off
    print("fit | surface distance to the truth, mean (mm) | R^2 | warned | s")
    for name, kw in (("no hint", {}), ("centre 1.6 mm off", {"centre": hint}),
                     ("that centre, radius 6.5 mm", {"centre": hint, "radius": 6.5}),
                     ("that centre, radius 6.5 mm, window none", {"centre": hint, "radius": 6.5, "window": None})):
        t = time.perf_counter()
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            r = fit(image, grid, observed_kind="intensity", pose="rigid", **kw)
        d = surface_distances(r.mesh(), mesh)
        print(f"{name} | {d.mean():.3f} | {r.quality['r2']:.2f} | {'yes' if said else 'no'} | {time.perf_counter() - t:.0f}",
              flush=True)


if __name__ == "__main__":
    main()
