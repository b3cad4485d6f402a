"""`segment.kind panst3r` end to end: a tiny pseudo-random PanSt3R checkpoint on the tiny synthetic scene.

The network is random, so it segments badly: these tests check structure and consistency (ids, classes,
files, metrics keys, what the evaluator would compute), never quality. The checkpoint is written in the
official layout with a 64 px training size in its args, so the network runs at 64x48 (the scene is 96x72).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).absolute().parents[2]
DEMO = REPO / "configs" / "demo.yaml"
HEADLINE = ("pq", "sq", "rq", "pq_th", "pq_st", "miou")


def run_cli(*args: str, env: dict | None = None, timeout: float = 600):
    cmd = [sys.executable, "-m", "pipeline", "run", str(DEMO), *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PIPELINE_DEBUG": "", **(env or {})})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny scene, tiny v1 checkpoint (official layout, trained-size 64) and a .pt vocabulary of the 21 classes."""
    import panst3r
    from panst3r.checkpoint import constructor_strings
    from panst3r.text import panlift_vocabulary, save_embeddings
    from pipeline.synth import generate, make_config

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("panst3r_run")
    scene = generate(d / "scene", make_config("tiny", seed=0))
    model = panst3r.build_model("v1", "tiny")
    strings = {k: v.replace("img_size=[512, 512]", "img_size=[64, 64]") for k, v in constructor_strings(model.config).items()}
    assert "img_size=[64, 64]" in strings["must3r_encoder"]
    ckpt = d / "tiny_v1.pth"
    torch.save({"weights": model.state_dict(), "args": argparse.Namespace(**strings), "epoch": 0}, ckpt)
    prompts, ids = panlift_vocabulary()
    emb = torch.randn(len(prompts), model.config.text_dim, generator=torch.Generator().manual_seed(1))
    vocab = save_embeddings(d / "vocab.pt", emb / emb.norm(dim=-1, keepdim=True), prompts)
    return {"dir": d, "scene": scene, "ckpt": ckpt, "vocab": vocab, "model": model}


def panst3r_args(files, run_dir):
    # standard_v2 merge: with these embeddings the random network gives a thing and a stuff segment
    return ("--scene.path", str(files["scene"]), "--segment.kind", "panst3r", "--segment.checkpoint", str(files["ckpt"]),
            "--segment.vocabulary", str(files["vocab"]), "--segment.merge", "standard_v2", "--splat.preset", "tiny",
            "--output.dir", str(run_dir))


@pytest.fixture(scope="module")
def run(files):
    run_dir = files["dir"] / "run"
    p = run_cli(*panst3r_args(files, run_dir))
    assert p.returncode == 0, p.stdout + p.stderr
    return run_dir, p


def _scene(files):
    from pipeline.scene import load_scene

    return load_scene(files["scene"])


def test_segment_stage_maps(files, run):
    from pipeline.common.classes import PANLIFT_CLASSES, THING_IDS
    from pipeline.common.io import read_png

    run_dir, _ = run
    scene = _scene(files)
    seg = run_dir / "segment"
    info = json.loads((seg / "info.json").read_text())
    assert info["kind"] == "panst3r" and info["simulated"] is False and info["network_size"] == 64
    assert info["train"] == scene.train and info["test"] == scene.test
    assert info["passes"] == {"train": len(scene.train), "test": len(scene.test)} and info["merge"] == "standard_v2"
    segments = {int(k): v for k, v in json.loads((seg / "segments.json").read_text()).items()}
    assert segments and info["num_instances"] == len(segments)
    for i, v in segments.items():
        assert 1 <= v["class_id"] <= 21 and v["class_name"] == PANLIFT_CLASSES[v["class_id"]]
        assert v["thing"] == (v["class_id"] in THING_IDS)
    # one multi-view pass per split, official flow: all views are keyframes (<= 50), network size 64x48
    meta = json.loads((seg / "panst3r" / "train" / "meta.json").read_text())
    assert meta["network_hw"] == [48, 64] and meta["keyframes"] == scene.train and meta["merge"] == "standard_v2"
    assert meta["class_ids"] == list(range(1, 22)) and not (seg / "panst3r" / "train" / "pointmaps.npz").exists()
    ids_by_pass = {"train": set(), "test": set()}
    for split, stems in (("train", scene.train), ("test", scene.test)):
        for s in stems:
            inst, sem = read_png(seg / "instance" / f"{s}.png"), read_png(seg / "semantics" / f"{s}.png")
            assert inst.dtype == np.uint16 and sem.dtype == np.uint8 and inst.shape == sem.shape == (72, 96)
            lut = {0: 0, **{i: v["class_id"] for i, v in segments.items()}}
            assert set(np.unique(inst).tolist()) <= set(lut), s  # every id is in segments.json
            np.testing.assert_array_equal(sem, np.vectorize(lut.get)(inst))  # one class per id, in every view
            ids_by_pass[split] |= set(np.unique(inst).tolist()) - {0}
            raw = read_png(seg / "panst3r" / split / "instance" / f"{s}.png").astype(np.int64)
            offset = 0 if split == "train" else max(i for i, v in segments.items() if v["pass"] == "train")
            np.testing.assert_array_equal(inst, np.where(raw > 0, raw + offset, 0))
    assert ids_by_pass["train"] and all(segments[i]["pass"] == "train" for i in ids_by_pass["train"])
    assert not ids_by_pass["train"] & ids_by_pass["test"]  # separate passes never share an id


def test_segment_stage_matches_a_direct_pass(files, run):
    """The stage's train maps are exactly PanSt3R's own output for the train images (same model, settings)."""
    from panst3r.cli import class_vocabulary
    from panst3r.segment import segment_images
    from pipeline.common.io import read_png

    torch.set_num_threads(1)
    run_dir, _ = run
    scene = _scene(files)
    vocab = class_vocabulary(str(files["vocab"]), panlift_ids=True)
    out = segment_images([scene.frame(s).image for s in scene.train], files["model"], vocab.embeddings, vocab.names,
                         files["dir"] / "direct", merge="standard_v2", size=64, progress=False, class_ids=vocab.class_ids)
    for s in scene.train:
        np.testing.assert_array_equal(read_png(out / "instance" / f"{s}.png"),
                                      read_png(run_dir / "segment" / "instance" / f"{s}.png"))
        np.testing.assert_array_equal(read_png(out / "semantics" / f"{s}.png"),
                                      read_png(run_dir / "segment" / "semantics" / f"{s}.png"))


def test_metrics_and_render_then_segment(files, run):
    from pipeline.common.classes import THING_IDS
    from pipeline.common.io import read_png
    from pipeline.metrics import evaluate_scene, json_safe

    run_dir, p = run
    scene = _scene(files)
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["segmenter_kind"] == "panst3r"
    for key in ("uplift", "segmenter_on_test", "render_then_segment"):
        assert all(k in m[key] for k in HEADLINE), (key, m[key])
    assert "render-then-segment" in p.stdout
    rts = run_dir / "render_then_segment"
    assert not (rts / "skipped.txt").exists()
    meta = json.loads((rts / "panst3r" / "meta.json").read_text())
    assert meta["stems"] == scene.test and meta["keyframes"] == scene.test  # one pass over all test renders
    segs = json.loads((rts / "panst3r" / "segments.json").read_text())
    for s in scene.test:
        sem, sur = read_png(rts / "pred_semantics" / f"{s}.png"), read_png(rts / "pred_surrogateid" / f"{s}.png")
        raw = read_png(rts / "panst3r" / "instance" / f"{s}.png")
        assert sem.dtype == np.uint8 and sur.dtype == np.uint16 and sem.shape == sur.shape == (72, 96)
        lut = {0: 0, **{int(k): v["class_id"] for k, v in segs.items()}}
        np.testing.assert_array_equal(sem, np.vectorize(lut.get)(raw))
        thing = np.isin(sem, list(THING_IDS))
        np.testing.assert_array_equal(sur, np.where(thing, raw, 0))  # stuff and void carry no surrogate id
        for sub in ("pred_semantics", "pred_surrogateid"):
            assert (run_dir / "evaluate" / "segmenter_on_test" / sub / f"{s}.png").is_file()
    assert m["render_then_segment"] == json.loads(json.dumps(json_safe(evaluate_scene(files["scene"], rts))))


def test_rerun_is_cached(files, run):
    run_dir, _ = run
    p = run_cli(*panst3r_args(files, run_dir))
    assert p.returncode == 0, p.stderr
    for stage in ("segment", "splat", "uplift", "render", "evaluate", "render_then_segment"):
        assert f"{stage} cached" in p.stdout.replace("\n", " "), p.stdout


def test_missing_text_embeddings_is_one_line(files, tmp_path):
    """No embeddings file, no SigLIP offline: one line saying what to pass; nothing but config.yaml written."""
    run_dir = tmp_path / "run"
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    p = run_cli("--scene.path", str(files["scene"]), "--segment.kind", "panst3r", "--segment.checkpoint",
                str(files["ckpt"]), "--splat.preset", "tiny", "--output.dir", str(run_dir), env=env)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--segment.vocabulary FILE.pt" in lines[0] and "Traceback" not in p.stderr, p.stderr
    assert not (run_dir / "segment").exists()


def test_bad_vocabulary_width_and_merge(files, tmp_path):
    from panst3r.text import panlift_vocabulary, save_embeddings

    prompts, _ = panlift_vocabulary()
    wide = save_embeddings(tmp_path / "wide.pt", torch.randn(21, 24), prompts)
    p = run_cli("--scene.path", str(files["scene"]), "--segment.kind", "panst3r", "--segment.checkpoint",
                str(files["ckpt"]), "--segment.vocabulary", str(wide), "--splat.preset", "tiny",
                "--output.dir", str(tmp_path / "run"))
    assert p.returncode == 2 and "24 wide" in p.stderr and "expects 16" in p.stderr, p.stderr
    # the same file given as --segment.text-embeddings for the default "panlift" vocabulary reaches the same check
    p = run_cli("--scene.path", str(files["scene"]), "--segment.kind", "panst3r", "--segment.checkpoint",
                str(files["ckpt"]), "--segment.text-embeddings", str(wide), "--splat.preset", "tiny",
                "--output.dir", str(tmp_path / "run3"))
    assert p.returncode == 2 and "24 wide" in p.stderr and "expects 16" in p.stderr, p.stderr
    p = run_cli("--scene.path", str(files["scene"]), "--segment.kind", "panst3r", "--segment.checkpoint",
                str(files["ckpt"]), "--segment.merge", "greedy", "--output.dir", str(tmp_path / "run2"))
    assert p.returncode == 2 and "segment.merge 'greedy'" in p.stderr, p.stderr


def test_render_then_segment_skips_without_an_image_segmenter():
    from pipeline.config import RunConfig
    from pipeline.stages import rts_skip_reason

    cfg = RunConfig()
    assert cfg.segment.kind == "simulated"
    why = rts_skip_reason(cfg)
    assert why is not None and "\n" not in why and "segment.kind panst3r" in why


def test_cameras_from_panst3r_pointmaps(files, tmp_path):
    """`--scene.poses pointmaps` with PanSt3R: one cached pass over every image gives the cameras (mapped from the
    network's crop back to the image), scored against the scene's poses. The network is pseudo-random, so only
    the plumbing is checked, not the accuracy (SIMULATED pointmaps check that: test_capture_runs)."""
    run_dir = tmp_path / "run"
    p = run_cli(*panst3r_args(files, run_dir), "--scene.poses", "pointmaps")
    assert p.returncode == 0, p.stdout + p.stderr
    m = json.loads((run_dir / "metrics.json").read_text())
    train = _scene(files).train
    assert m["pose_eval"]["num_registered"] == len(train) and m["pose_eval"]["ate"] >= 0
    assert any("pointmaps (PanSt3R)" in n for n in m["capture"])
    cams = json.loads(next((run_dir / ".cache").glob("pointmaps-*/panst3r/cameras.json")).read_text())
    assert len(cams) == len(_scene(files).frames)  # train and test views in one pass
