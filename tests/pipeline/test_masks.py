"""Masks as users have them: both stuff conventions, unassigned things, bad files, warnings, and two runs on the
tiny synthetic scene (PanLift-convention GT masks; SIMULATED per-frame masks associated in 3D)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.checks import LIMITS, self_check_scores, uplift_warnings
from pipeline.common.io import InputError, read_png, write_png
from pipeline.common.labels import STUFF_ID_OFFSET
from pipeline.masks import MaskStats, convention_note, read_mask_pair, segment_ids

REPO = Path(__file__).absolute().parents[2]
WALL, FLOOR, CHAIR, TV = 1, 2, 5, 15
S = STUFF_ID_OFFSET


def test_segment_ids_both_conventions_and_unassigned_things(tmp_path):
    sem = np.array([[WALL, WALL, CHAIR, CHAIR], [FLOOR, 0, CHAIR, TV]])
    panlift = np.array([[0, 0, 4, 4], [0, 9, 0, 0]])  # stuff 0; chair (1,2) and TV unassigned; void with id 9
    own = np.array([[11, 11, 4, 4], [12, 9, 4, 3]])  # stuff with its own ids
    assert segment_ids(sem, panlift, tmp_path).tolist() == [[S + WALL, S + WALL, 4, 4], [S + FLOOR, 0, 0, 0]]
    assert segment_ids(sem, own, tmp_path).tolist() == [[11, 11, 4, 4], [12, 0, 4, 3]]
    # per-frame: stuff ids mean nothing across views, stuff goes by class whatever its id
    assert segment_ids(sem, own, tmp_path, stuff_by_class=True).tolist() == [[S + WALL, S + WALL, 4, 4],
                                                                               [S + FLOOR, 0, 4, 3]]
    st = MaskStats()
    st.add(sem.astype(np.uint8), panlift, segment_ids(sem, panlift, tmp_path), "0")
    assert st.convention == "stuff_instance_0" and st.unassigned_thing_px == 2 and st.nonvoid_px == 7
    assert st.as_dict()["labelled_nonvoid_share"] == pytest.approx(5 / 7)
    assert "PanLift convention" in convention_note(st) and "unassigned things" in convention_note(st)
    st2 = MaskStats()
    st2.add(sem.astype(np.uint8), own, segment_ids(sem, own, tmp_path), "0")
    assert st2.convention == "stuff_own_ids"
    with pytest.raises(InputError, match="collides with the stuff segment ids"):
        segment_ids(sem, np.where(panlift == 4, S + 3, panlift), tmp_path / "x.png")
    # per-frame ids are renumbered within the frame instead (they mean nothing across views anyway)
    big = np.array([[0, 0, 61000, 61000], [0, 9, 61000, 62000]])
    assert segment_ids(sem, big, tmp_path, stuff_by_class=True).tolist() == [[S + WALL, S + WALL, 1, 1],
                                                                               [S + FLOOR, 0, 1, 2]]


def _write(d: Path, stem: str, sem: np.ndarray, inst: np.ndarray):
    write_png(d / "semantics" / f"{stem}.png", sem.astype(np.uint8))
    if inst.max() > 65535:  # a PNG holds at most 16 bits a channel: ids beyond come RGB-encoded (COCO panoptic)
        rgb = np.stack([inst % 256, inst // 256 % 256, inst // 65536], -1).astype(np.uint8)
        write_png(d / "instance" / f"{stem}.png", rgb)
    else:
        write_png(d / "instance" / f"{stem}.png", inst.astype(np.uint16))


@pytest.mark.parametrize("case,needle", [
    ("size", "masks are 40x40 but frame"),
    ("missing", "missing semantics map for train frame"),
    ("uint16", "RGB-encoded instance ids up to 70000, beyond uint16"),
    ("void", "all-void frame"),
    ("class", "class id 30 outside the PanLift vocabulary"),
])
def test_bad_masks_one_line_naming_the_file_nothing_written(tiny_scene, tmp_path, case, needle):
    from pipeline.config import parse_run_args
    from pipeline.run import run_pipeline

    masks = tmp_path / "masks"
    shutil.copytree(tiny_scene / "rs_semantics", masks / "semantics")
    shutil.copytree(tiny_scene / "rs_instance", masks / "instance")
    stem = json.loads((tiny_scene / "splits.json").read_text())["train"][3]
    sem, inst = read_png(masks / "semantics" / f"{stem}.png"), read_png(masks / "instance" / f"{stem}.png")
    bad = masks / ("instance" if case == "uint16" else "semantics") / f"{stem}.png"
    if case == "size":
        _write(masks, stem, sem[:40, :40], inst[:40, :40])
        bad = masks / "instance" / f"{stem}.png"
    elif case == "missing":
        bad.unlink()
    elif case == "uint16":
        _write(masks, stem, sem, np.where(inst > 0, 70000, 0))
    elif case == "void":
        _write(masks, stem, np.zeros_like(sem), inst)
    else:
        _write(masks, stem, np.where(sem == WALL, 30, sem), inst)
    run = tmp_path / "run"
    cfg = parse_run_args(REPO / "configs" / "demo.yaml", ["--scene.path", str(tiny_scene), "--output.dir", str(run),
                                                          "--segment.kind", "precomputed", "--segment.path", str(masks)])
    with pytest.raises(InputError) as e:
        run_pipeline(cfg, quiet=True)
    msg = str(e.value)
    assert needle in msg and str(bad) in msg and "\n" not in msg
    assert not (run / "segment").exists() and not [p for p in run.glob(".*tmp*")]


def test_read_mask_pair_accepts_uint16_semantics(tmp_path):
    write_png(tmp_path / "s.png", np.full((6, 8), CHAIR, np.uint16))
    write_png(tmp_path / "i.png", np.full((6, 8), 3, np.uint16))
    sem, inst = read_mask_pair(tmp_path / "s.png", tmp_path / "i.png", 16, 12, "0")
    assert sem.dtype == np.uint8 and sem.max() == CHAIR and inst.max() == 3


def test_self_check_scores_and_warnings():
    mi = np.array([[S + WALL, S + WALL, 4, 4], [S + WALL, 7, 7, 0]])
    ms = np.array([[WALL, WALL, CHAIR, CHAIR], [WALL, CHAIR, CHAIR, 0]])
    same = self_check_scores(mi[None], ms[None], mi[None], ms[None])
    assert same["agreement"] == 1.0 and same["thing_agreement"] == 1.0 and same["pq"] == pytest.approx(1.0)
    swapped = np.where(mi == 4, 7, np.where(mi == 7, 4, mi))  # thing ids swapped: what inconsistent ids give
    sc = self_check_scores(swapped[None], ms[None], mi[None], ms[None])
    assert sc["thing_agreement"] == 0.0 and sc["agreement"] == pytest.approx(3 / 7) and sc["class_agreement"] == 1.0
    w = uplift_warnings(0.433, 0.55, sc)
    assert len(w) == 4 and "43.3% of Gaussians" in w[0] and "55.0% of non-void training pixels" in w[1]
    assert any("--segment.kind per_frame" in x for x in w)
    assert uplift_warnings(0.99, 1.0, same) == [] and LIMITS["labelled_gaussians"] == 0.5


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory) -> Path:
    from pipeline.synth import generate, make_config

    return generate(tmp_path_factory.mktemp("scene") / "tiny", make_config("tiny", seed=0))


def _run(scene: Path, run: Path, *extra: str, out: list | None = None) -> dict:
    cmd = [sys.executable, "-m", "pipeline", "run", str(REPO / "configs" / "demo.yaml"), "--scene.path", str(scene),
           "--output.dir", str(run), "--splat.preset", "tiny", *extra]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "PIPELINE_DEBUG": ""})
    assert p.returncode == 0, p.stdout + p.stderr
    if out is not None:
        out.append(p.stdout)
    return json.loads((run / "metrics.json").read_text())


def test_per_frame_ids_given_as_consistent_warn_loudly(tiny_scene, tmp_path):
    """Per-frame masks passed as precomputed (consistent) masks: the run still finishes, but the self-check
    catches it and says so in the summary, the report and metrics.json."""
    masks = tmp_path / "m2f"
    shutil.copytree(tiny_scene / "m2f_semantics", masks / "semantics")
    shutil.copytree(tiny_scene / "m2f_instance", masks / "instance")
    out: list = []
    m = _run(tiny_scene, tmp_path / "run", "--segment.kind", "precomputed", "--segment.path", str(masks), out=out)
    assert m["self_check"]["thing_agreement"] < LIMITS["self_check_thing_agreement"]
    assert any("--segment.kind per_frame" in w for w in m["warnings"])
    assert "WARNING:" in " ".join(out[0].split()) and "self-check" in out[0]
    assert "**WARNING:** self-check" in (tmp_path / "run" / "report.md").read_text()


def test_panlift_convention_masks_uplift_well(tiny_scene, tmp_path):
    """GT masks in PanLift's convention (stuff instance 0) used to score uplift PQ 0: now near the masks' own."""
    masks = tmp_path / "gt_masks"
    shutil.copytree(tiny_scene / "rs_semantics", masks / "semantics")
    shutil.copytree(tiny_scene / "rs_instance", masks / "instance")
    m = _run(tiny_scene, tmp_path / "run", "--segment.kind", "precomputed", "--segment.path", str(masks))
    info = json.loads((tmp_path / "run" / "segment" / "info.json").read_text())
    assert info["masks_read"]["convention"] == "stuff_instance_0" and "PanLift convention" in info["note"]
    assert m["uplift"]["pq"] > 0.7 and m["uplift"]["pq_st"] > 0.6
    assert m["warnings"] == [] and m["self_check"]["agreement"] > 0.8 and m["render_void_share"] < 0.05


def test_simulated_masks_with_stuff_ids_zeroed(tiny_scene, tmp_path):
    """The scene's SIMULATED consistent masks turned into PanLift's convention (stuff instance ids set to 0): the
    stuff classes become one segment each and the uplift scores as well as with the original ids."""
    from pipeline.common.classes import THING_IDS
    from pipeline.synth import SIMULATED_CONSISTENT_DIR

    src, masks = tiny_scene / SIMULATED_CONSISTENT_DIR, tmp_path / "zeroed"
    for p in sorted((src / "semantics").glob("*.png")):
        sem, inst = read_png(p), read_png(src / "instance" / p.name)
        _write(masks, p.stem, sem, np.where(np.isin(sem, sorted(THING_IDS)), inst, 0))
    m = _run(tiny_scene, tmp_path / "run", "--segment.kind", "precomputed", "--segment.path", str(masks))
    info = json.loads((tmp_path / "run" / "segment" / "info.json").read_text())
    assert info["masks_read"]["convention"] == "stuff_instance_0"
    assert m["uplift"]["pq"] > 0.7 and m["warnings"] == [], m["uplift"]


def test_per_frame_masks_are_associated(tiny_scene, tmp_path):
    """The scene's SIMULATED per-frame masks (split/merged things, shuffled ids): associated+uplifted PQ far above
    the per-frame masks scored directly; consistent train masks written; the same run twice is identical."""
    run = tmp_path / "run"
    m = _run(tiny_scene, run, "--segment.kind", "per_frame")
    assert m["segmenter_kind"] == "per_frame" and m["warnings"] == []
    assert m["uplift"]["pq"] >= m["segmenter_on_test"]["pq"] + 0.3, (m["uplift"], m["segmenter_on_test"])
    assert m["association"]["num_instances"] >= 4
    train = json.loads((tiny_scene / "splits.json").read_text())["train"]
    assoc = run / "uplift" / "associated" / "instance"
    assert sorted(p.stem for p in assoc.glob("*.png")) == sorted(train)
    assert "Associated train masks" in (run / "report.md").read_text()
    info = json.loads((run / "segment" / "info.json").read_text())
    assert info["simulated"] and "SIMULATED" in info["note"]
    # determinism: uplift again from the same Gaussians
    first = {p.name: p.read_bytes() for p in assoc.glob("*.png")}
    _run(tiny_scene, run, "--segment.kind", "per_frame", "--from", "uplift")
    assert {p.name: p.read_bytes() for p in assoc.glob("*.png")} == first


def test_simulated_per_frame_segmenter(tiny_scene):
    """m2f_* = the same SIMULATED masks as simulated_m2f_consistent/ up to a per-frame renaming of thing ids; ids
    unique per (frame, segment); some things split, some merged; stuff carries instance 0."""
    from pipeline.common.classes import THING_IDS
    from pipeline.synth import SIMULATED_M2F_CONSISTENT_DIR

    root = tiny_scene
    meta = json.loads((root / "scene_meta.json").read_text())
    events = [e["event"] for ev in meta["simulated_segmenter"]["events"].values() for e in ev["m2f"]]
    assert "split" in events and "merged" in events
    seen: set[int] = set()
    for s in json.loads((root / "splits.json").read_text())["train"]:
        m2f = read_png(root / "m2f_instance" / f"{s}.png").astype(np.int64)
        sem = read_png(root / "m2f_semantics" / f"{s}.png")
        cons = read_png(root / SIMULATED_M2F_CONSISTENT_DIR / "instance" / f"{s}.png").astype(np.int64)
        np.testing.assert_array_equal(read_png(root / SIMULATED_M2F_CONSISTENT_DIR / "semantics" / f"{s}.png"), sem)
        assert np.all(m2f[~np.isin(sem, list(THING_IDS))] == 0) and np.array_equal(m2f > 0, cons > 0)
        pairs = np.unique(np.stack([m2f[m2f > 0], cons[m2f > 0]]), axis=1)
        assert len(set(pairs[0])) == len(set(pairs[1])) == pairs.shape[1]  # a bijection in this frame
        assert not (set(pairs[0].tolist()) & seen)
        seen |= set(pairs[0].tolist())
