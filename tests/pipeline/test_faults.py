"""Faults a run must survive: a second run on the same folder, damaged cached artefacts, a full disk, a
malicious pickle given as a checkpoint, a PLY header that claims billions of vertices.

One reference run of the tiny synthetic scene (`tiny` splat preset) is made per module and copied per test.
"""

from __future__ import annotations

import errno
import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.common.io import InputError

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo.yaml"
FAST = ["--splat.preset", "tiny"]


def run_args(scene: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["run", str(DEMO), "--scene.path", str(scene), "--output.dir", str(run_dir), *FAST, *extra]


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PIPELINE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    from pipeline.synth import generate, make_config

    return generate(tmp_path_factory.mktemp("faults") / "scene", make_config("tiny", 0))


@pytest.fixture(scope="module")
def reference(scene, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("faults_ref") / "run"
    p = cli(*run_args(scene, run_dir))
    assert p.returncode == 0, p.stderr[-2000:]
    return run_dir


def _ran(stdout: str) -> list[str]:
    """The stages a run's progress lines say were computed (not cached)."""
    from pipeline.stages import STAGE_ORDER

    return [ln.split()[0] for ln in stdout.splitlines() if ln.split()[:1] and ln.split()[0] in STAGE_ORDER
            and " done in " in ln]


def _files(root: Path, skip=(".lock",)) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}


def _same_tree(a: Path, b: Path, sub: str) -> bool:
    """Every file under a/sub equal (bytes) to b/sub's, and the same set of files (timing-only files aside)."""
    volatile = {"manifest.json", "history.json", "train_summary.json"}
    fa = {str(p.relative_to(a / sub)) for p in (a / sub).rglob("*") if p.is_file() and p.name not in volatile}
    fb = {str(p.relative_to(b / sub)) for p in (b / sub).rglob("*") if p.is_file() and p.name not in volatile}
    return fa == fb and all(_same_file(a / sub / r, b / sub / r) for r in fa)


def _same_file(a: Path, b: Path) -> bool:
    """Equal bytes; for torch files equal content (torch.save stores the temporary file's name in the archive,
    and a checkpoint's training history holds wall-clock times)."""
    if a.suffix != ".pt":
        return filecmp.cmp(a, b, shallow=False)
    return _same_obj(torch.load(a, weights_only=True), torch.load(b, weights_only=True))


def _same_obj(x, y) -> bool:
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_same_obj(x[k], y[k]) for k in x if k != "time")
    if isinstance(x, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(map(_same_obj, x, y))
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and torch.equal(x, y)
    return x == y


# -- two runs on one folder ------------------------------------------------------------------------------------


def test_second_run_on_the_same_folder_is_refused_while_the_first_holds_it(reference, scene, tmp_path):
    from pipeline.run import run_lock

    run_dir = shutil.copytree(reference, tmp_path / "run")
    before = _files(run_dir)
    with run_lock(run_dir):  # exactly what a running `pipeline run` holds for its whole duration
        p = cli(*run_args(scene, run_dir))
        assert p.returncode == 2, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {run_dir}: another `pipeline run` is using this run "
                                                       "directory; wait for it"), p.stderr
        assert _files(run_dir) == before  # the refused run wrote nothing (config.yaml, metrics, report untouched)
    p = cli(*run_args(scene, run_dir))  # released: the same command now goes through (all cached)
    assert p.returncode == 0, p.stderr[-2000:]
    assert _ran(p.stdout) == []


# -- damaged cached artefacts ----------------------------------------------------------------------------------


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))


@pytest.mark.parametrize("rel,damage,says", [
    ("splat/ckpt.pt", _truncate, "splat/ckpt.pt is missing or does not match its sha256"),
    ("splat/gaussians.ply", _truncate, "splat/gaussians.ply is missing or does not match its sha256"),
    ("uplift/uplift.npz", _flip, "uplift/uplift.npz is missing or does not match its sha256"),
    ("segment/manifest.json", lambda p: p.write_text('{"stage": "segm'), "segment/manifest.json is unreadable"),
], ids=["ckpt.pt-truncated", "ply-truncated", "npz-flipped-byte", "manifest-cut"])
def test_damaged_cached_artefact_is_reported_and_recomputed(reference, scene, tmp_path, rel, damage, says):
    run_dir = shutil.copytree(reference, tmp_path / "run")
    damage(run_dir / rel)
    p = cli(*run_args(scene, run_dir))
    assert p.returncode == 0, p.stderr[-2000:]
    stage = rel.split("/")[0]
    notes = [ln for ln in p.stdout.splitlines() if "recomputing the stage" in ln]
    assert len(notes) == 1 and says in notes[0] and notes[0].startswith(f"{stage}: "), p.stdout
    assert _ran(p.stdout) == [stage]
    # the stages are seeded and deterministic: the recomputed stage equals the reference, downstream stays cached
    assert _same_tree(run_dir, reference, stage)


# -- disk full -------------------------------------------------------------------------------------------------


def test_disk_full_keeps_finished_outputs_and_a_rerun_completes(reference, scene, tmp_path, monkeypatch, capsys):
    """SIMULATED disk full: the render stage's PNG writer raises OSError(ENOSPC) on its third image."""
    import uplift.render

    run_dir = shutil.copytree(reference, tmp_path / "run")
    before = _files(run_dir / "render")
    real, calls = uplift.render.write_png, []

    def full_disk(path, arr):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, arr)

    monkeypatch.setattr(uplift.render, "write_png", full_disk)
    code = main(run_args(scene, run_dir, "--from", "render"))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: {calls[2]}: no space left on device while writing it; free some space and run "
                           "the same command again"), err
    assert _files(run_dir / "render") == before  # the previous complete render folder, untouched
    assert not [p for p in run_dir.iterdir() if ".tmp-" in p.name]  # the unfinished one was removed
    monkeypatch.setattr(uplift.render, "write_png", real)
    assert main(run_args(scene, run_dir)) == 0  # space is back: the same command completes
    for stage in ("render", "evaluate"):
        assert _same_tree(run_dir, reference, stage)


# -- malicious pickles -----------------------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil(path: Path, marker: Path, wrap) -> Path:
    torch.save(wrap(_Payload(marker)), path)
    assert not marker.exists()
    return path


def test_malicious_panst3r_checkpoint_executes_nothing(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = _evil(tmp_path / "evil.pth", marker, lambda x: {"weights": {}, "args": x})
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(images / "a.png")
    from panst3r.text import panlift_vocabulary

    emb = tmp_path / "emb.npy"  # valid class embeddings, so that the checkpoint is what gets loaded
    np.save(emb, np.eye(len(panlift_vocabulary()[0]), 768, dtype=np.float32))
    p = cli("segment", "--images", str(images), "--checkpoint", str(ckpt), "--out", str(tmp_path / "seg"),
            "--text-embeddings", str(emb))
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {ckpt}: refused to load: it references the Python object") and "posix.system" in last
    assert "nothing was executed" in last
    assert not marker.exists() and not (tmp_path / "seg").exists()


@pytest.mark.parametrize("loader", ["splat.checkpoint.load_checkpoint", "panst3r.text.load_embeddings"])
def test_malicious_pickle_in_other_user_files_executes_nothing(tmp_path, loader):
    import importlib

    marker = tmp_path / "pwned"
    path = _evil(tmp_path / "evil.pt", marker, lambda x: {"version": 1, "embeddings": x, "class_names": ["a"]})
    mod, name = loader.rsplit(".", 1)
    with pytest.raises(InputError, match=str(path)):
        getattr(importlib.import_module(mod), name)(path)
    assert not marker.exists()


# -- PLY headers -----------------------------------------------------------------------------------------------


def _ply(path: Path, fmt: str, count: int, body: bytes) -> Path:
    path.write_bytes(f"ply\nformat {fmt} 1.0\nelement vertex {count}\nproperty float x\nproperty float y\n"
                     f"property float z\nend_header\n".encode() + body)
    return path


@pytest.mark.parametrize("fmt", ["binary_little_endian", "ascii"])
def test_ply_claiming_billions_of_vertices_is_refused_before_allocating(tmp_path, monkeypatch, fmt):
    import plyfile

    from splat.ply import load_ply

    def never(*a, **k):
        raise AssertionError("plyfile was asked to read a file whose header cannot be true")

    monkeypatch.setattr(plyfile.PlyData, "read", never)
    p = _ply(tmp_path / "huge.ply", fmt, 4_000_000_000, b"\0" * 240)
    with pytest.raises(InputError, match=r"huge.ply: the PLY header claims 4,000,000,000 vertex \(.* bytes at least\) "
                                         r"but only 240 bytes follow it"):
        load_ply(p)


def test_ply_header_check_accepts_what_fits(tmp_path, reference):
    from splat.ply import check_ply_header

    # 20 vertices of 3 float32 = 240 bytes: fits exactly; 21 do not
    assert check_ply_header(_ply(tmp_path / "ok.ply", "binary_little_endian", 20, b"\0" * 240)) == 20
    with pytest.raises(InputError, match="claims 21 vertex"):
        check_ply_header(_ply(tmp_path / "no.ply", "binary_little_endian", 21, b"\0" * 240))
    (tmp_path / "plain.ply").write_text("hello, not a PLY")
    with pytest.raises(InputError, match="plain.ply: cannot read as a PLY file"):
        check_ply_header(tmp_path / "plain.ply")
    from plyfile import PlyData

    for rel in ("splat/gaussians.ply", "uplift/labelled.ply"):  # real outputs pass, with plyfile's count
        assert check_ply_header(reference / rel) == PlyData.read(str(reference / rel))["vertex"].count


def test_second_demo_on_the_same_folder_is_refused_before_it_writes_the_scene(tmp_path):
    from pipeline.common.io import claim_dir
    from pipeline.run import run_lock

    out = claim_dir(tmp_path / "demo", "run")
    with run_lock(out):  # a first demo still generating its scene
        p = cli("demo", "--out", str(out), "--preset", "tiny")
    assert p.returncode == 2 and "another `pipeline run` is using this run directory" in p.stderr.strip().splitlines()[-1]
    assert not (out / "scene").exists()
