"""What a CT-like fit near the model's orientation leaves in its residuals, right and wrong (a one-off probe, not a
bench section): ``python bench/turns_probe.py``. The fit study's 15 CT-like phantoms (turned up to 30 degrees), then 12
turned more than 70 degrees (noise 100, 50 or 200), each fitted by the hybrid with ``turns="near"``; per fit, the
rotation error, R^2, the residuals' correlation volume and their sigma over the image's own noise: what the
all-orientations search of ``turns="auto"`` (AUTO_ALL_R2, NOISE_VOLUME, NOISE_RATIO in sdmnn.fitting) is told by."""
from __future__ import annotations

import warnings

import numpy as np

import sdmnn
from sdmnn.fitting import AUTO_ALL_R2, NOISE_RATIO, NOISE_VOLUME, _explains_poorly, _pinned, fit
from sdmnn.phantom import make_phantom

from fit_bench import _random_rotation, cases, phantoms, pose_error


def turned(n):
    rng = np.random.default_rng(21)
    for i, truth in enumerate(cases(n)):
        rotate = _random_rotation(rng)
        while np.linalg.norm(rotate) <= 70:
            rotate = _random_rotation(rng)
        yield (f"turned {i}", *make_phantom("cochlea", truth, kind="ct", rotate=rotate, translate=rng.uniform(-4, 4, 3),
                                             spacing=(0.25, 0.25, 0.5), noise=[100.0, 50.0, 200.0][i % 3], blur=0.25, seed=100 + i))


def main():
    warnings.simplefilter("ignore")
    model = sdmnn.load_model()
    study = ((f"study {case}", image, grid, info) for case, target, _, image, grid, info in phantoms(15, 15) if case >= 15)
    print(f"AUTO_ALL_R2 {AUTO_ALL_R2}, NOISE_VOLUME {NOISE_VOLUME}, NOISE_RATIO {NOISE_RATIO}")
    print("phantom | rotation error (deg) | R^2 | correlation volume (voxels) | sigma / image noise | second search")
    for name, image, grid, info in [*study, *turned(12)]:
        r = fit(image, grid, observed_kind="intensity", forward="hybrid", pose="rigid", model=model, seed=0, turns="near")
        omega, _ = pose_error(r, info)
        q, temper = r.quality, r.noise["correlation_volume"]
        fam = sdmnn.get_family("cochlea")
        again = _explains_poorly(q, temper, _pinned([r.params[k] for k in fam.names], fam.space.low, fam.space.high))
        print(f"{name} | {np.degrees(np.linalg.norm(omega)):.1f} | {q['r2']:.3f} | {temper:.2f} | "
              f"{q['sigma_over_image_noise']:.3f} | {'yes' if again else 'no'}", flush=True)


if __name__ == "__main__":
    main()
