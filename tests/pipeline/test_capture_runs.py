"""Whole runs on captures: geometry only and downscaled, cameras from SIMULATED pointmaps, SfM that fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.common.io import read_png

REPO = Path(__file__).absolute().parents[2]


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("caprun") / "tiny"
    p = run("synth", str(root), "--preset", "tiny")
    assert p.returncode == 0, p.stderr
    return root


def test_geometry_only_downscaled_run(tiny, tmp_path):
    out = tmp_path / "run"
    p = run("run", "configs/demo.yaml", "--scene.path", str(tiny), "--output.dir", str(out), "--splat.preset", "tiny",
            "--segment.kind", "none", "--scene.downscale", "2")
    assert p.returncode == 0, p.stdout + p.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["segmenter_kind"] == "none" and "uplift" not in m
    assert 5 < m["psnr"] < 60 and 0 < m["ssim"] <= 1
    splits = json.loads((tiny / "splits.json").read_text())
    rgb = read_png(out / "render" / "rgb" / f"{splits['test'][0]}.png")
    assert rgb.shape == (36, 48, 3)  # the tiny scene is 96x72
    assert not (out / "uplift" / "uplift.npz").exists() and (out / "uplift" / "skipped.txt").is_file()
    assert any("downscaled by 2" in n for n in m["capture"])


def test_pointmap_cameras_are_aligned_and_scored(tiny, tmp_path):
    out = tmp_path / "run"
    p = run("run", "configs/demo.yaml", "--scene.path", str(tiny), "--output.dir", str(out), "--splat.preset", "tiny",
            "--scene.poses", "pointmaps")
    assert p.returncode == 0, p.stdout + p.stderr
    m = json.loads((out / "metrics.json").read_text())
    pe = m["pose_eval"]
    assert set(pe) >= {"ate", "ate_rel", "rot_err_deg", "num_registered"}
    assert pe["num_registered"] == len(json.loads((tiny / "splits.json").read_text())["train"])
    assert pe["ate_rel"] < 0.03 and pe["rot_err_deg"] < 1.5  # SIMULATED noise: 0.5 deg, 0.5 % of the extent
    assert m["uplift"]["pq"] > 0.5
    assert "SIMULATED" in " ".join(m["capture"])


def test_sfm_that_registers_too_few_images_is_one_line(tiny, tmp_path):
    out = tmp_path / "run"
    p = run("run", "configs/demo.yaml", "--scene.path", str(tiny), "--output.dir", str(out), "--scene.poses", "colmap")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert "colmap registered only" in last and "of 24 images" in last and "--scene.poses pointmaps" in last
    assert not (out / "segment").exists()


def test_umeyama_matches_a_least_squares_reference():
    """Independent check: scipy's least squares on (s, rotation vector, t) finds the same optimum."""
    from scipy.optimize import least_squares
    from scipy.spatial.transform import Rotation

    from pipeline.poses import umeyama

    rng = np.random.default_rng(3)
    x = rng.normal(size=(12, 3))
    y = 1.7 * x @ Rotation.from_rotvec([0.3, -0.2, 0.5]).as_matrix().T + [0.4, 0.1, -1] + rng.normal(size=(12, 3)) * 0.05
    s, R, t = umeyama(x, y)

    def resid(p):
        return (p[0] * x @ Rotation.from_rotvec(p[1:4]).as_matrix().T + p[4:] - y).ravel()

    ref = least_squares(resid, np.r_[1.0, 0, 0, 0, 0, 0, 0]).x
    assert s == pytest.approx(ref[0], rel=1e-5)
    np.testing.assert_allclose(R, Rotation.from_rotvec(ref[1:4]).as_matrix(), atol=1e-5)
    np.testing.assert_allclose(t, ref[4:], atol=1e-5)


def test_bare_image_folder_without_poses_is_refused_before_the_run_folder_exists(tiny, tmp_path):
    import shutil

    photos = tmp_path / "photos"
    shutil.copytree(tiny / "color", photos)
    out = tmp_path / "run"
    p = run("run", "configs/demo.yaml", "--scene.path", str(photos), "--scene.format", "auto", "--output.dir", str(out),
            "--segment.kind", "none")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == (f"error: {photos}: a bare image folder has no camera poses; pass "
                                                 "--scene.poses colmap (structure from motion) or --scene.poses pointmaps")
    assert not out.exists()
