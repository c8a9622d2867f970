"""The README's own commands and Python example, run as a reader would, so that the first page cannot drift from
the code. Commands come from its ```sh blocks (one a line, a trailing # comment allowed); those whose comment says
``long`` (hours of work, a cluster) are skipped; the ```python block is run as a script."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sdmnn.io import volume_format_of

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def commands(block: str | None = None) -> list[tuple[str, bool]]:
    """(command, long) for every line of the README's sh blocks (or of one block)."""
    out = []
    for text in [block] if block is not None else blocks("sh"):
        for line in text.splitlines():
            if line.strip():
                command, _, comment = line.partition(" #")
                out.append((command.strip(), re.search(r"\blong\b", comment) is not None))
    return out


def test_the_readme_shows_commands_and_marks_only_long_jobs_to_skip():
    cmds = commands()
    assert len(cmds) >= 12
    for command, long in cmds:
        assert command.startswith(("sdmnn ", "torchrun ")), command
        assert long or command.startswith("sdmnn "), f"{command!r} is not an sdmnn command and not marked long"
    assert any(c.startswith("sdmnn fit") for c, long in cmds if not long)


#: Files that commands write besides their -o / --png targets ({volumes}: in the fitted image's format).
WITHIN = {"fit": ("result.json", "mesh.stl", "overlay.png", "sdm{volumes}", "labels{volumes}"), "runs/tiny": ("model.json",)}


@pytest.mark.parametrize("index", range(len(blocks("sh"))))
def test_every_readme_command_runs(tmp_path, index):
    """Each sh block on its own (a block's commands may use what the ones before it wrote), in a fresh folder; every
    output a command names exists and is not empty."""
    import shutil

    shutil.copytree(ROOT / "examples", tmp_path / "examples")  # the own-family commands run from the repository's root
    for command, long in commands(blocks("sh")[index]):
        if long:
            continue
        args = shlex.split(command)[1:]
        r = subprocess.run([sys.executable, "-m", "sdmnn.cli", *args], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, f"`{command}` failed:\n{r.stderr[-2000:]}"
        assert "Traceback" not in r.stderr, command
        for flag, target in zip(args, args[1:]):
            if flag in ("-o", "--output", "--png"):
                path = tmp_path / target
                volumes = volume_format_of(args[1]) if args[0] == "fit" else ""
                files = [path / f.format(volumes=volumes)
                         for f in WITHIN.get(target, WITHIN["fit"] if args[0] == "fit" else ())] or [path]
                for f in files:
                    assert f.exists() and f.stat().st_size > 0, f"`{command}` did not write {f.relative_to(tmp_path)}"


def test_the_readme_python_examples_run(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sdmnn.cli", "phantom", "cochlea", "--rotate", "20,-35,50", "--spacing", "0.6",
                        "-o", "seg.nii.gz"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    codes = blocks("python")
    assert len(codes) >= 2
    for code in codes:
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "x.nii.gz").exists()


@pytest.mark.parametrize("old, hint", [(["sdm", "cochlea", "--method", "nn", "-o", "x.nii.gz"], "--forward sdmnn"),
                                       (["sdm", "cochlea", "--forward", "nn", "-o", "x.nii.gz"], "--forward sdmnn")])
def test_the_networks_old_name_is_refused_with_a_hint(tmp_path, old, hint):
    r = subprocess.run([sys.executable, "-m", "sdmnn.cli", *old], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and hint in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.nii.gz").exists()
