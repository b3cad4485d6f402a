"""Headless PanSt3R segmentation end to end with a tiny pseudo-random network, and the CLI's input errors."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.common.io import InputError, read_png
from panst3r.cli import SegmentArgs, list_images, load_text_embeddings, read_vocabulary, segment_command


REPO = Path(__file__).absolute().parents[2]


def _tiny_model(variant: str):
    """Tiny network with the deterministic pseudo-random weights of `panst3r.build_model`."""
    import panst3r

    torch.set_num_threads(1)
    return panst3r.build_model(variant, "tiny")


def _offline_siglip(monkeypatch, tmp_path):
    """As on a machine without SigLIP in the HF cache: empty embedding cache, text model unavailable."""
    import panst3r.text as text
    from pipeline.common.io import InputError as IE

    def unavailable(model, device):
        raise IE(f"{model}: SigLIP tokenizer not available offline (no cached files)")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(text, "_text_model", unavailable)


def _write_images(folder: Path, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy + 40 * i) % 256], -1).astype(np.uint8)
        img[h // 4:h // 2, w // 4 + 5 * i:w // 2 + 5 * i] = rng.integers(0, 255, 3)
        p = folder / f"view{i}.png"
        Image.fromarray(img).save(p)
        paths.append(p)
    return paths


@pytest.mark.parametrize("variant,merge,method", [("v1", "qubo", "linspace"), ("v2", "standard_v2", "fps")])
def test_segment_images_end_to_end(tmp_path, variant, merge, method):
    from panst3r.postprocess import panoptic_qubo, panoptic_standard
    from panst3r.segment import load_images, segment_images

    model = _tiny_model(variant)
    paths = _write_images(tmp_path / "imgs", [(96, 72), (96, 72), (100, 60)])  # the last one gets centre-cropped
    names = [f"c{i}" for i in range(5)]
    emb = torch.randn(len(names), model.config.text_dim, generator=torch.Generator().manual_seed(1))
    out = segment_images(paths, model, emb, names, tmp_path / "seg", num_keyframes=2, keyframe_method=method,
                         merge=merge, seed=0, size=64, progress=False)
    assert out == tmp_path / "seg"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "panst3r" and meta["merge"] == merge and meta["network_hw"] == [48, 64]
    assert len(meta["keyframes"]) == 2 and meta["vocabulary"] == names
    # the written maps are exactly the merge of the model's output
    loaded = load_images(paths, size=64)
    stems = [p.stem for p in paths]
    kf = [stems.index(s) for s in meta["keyframes"]]
    with torch.no_grad():
        pred = model.infer(loaded.images, kf, emb)
    res = (panoptic_qubo(pred.pred_logits, pred.pred_masks, pred.true_shape, seed=0) if merge == "qubo"
           else panoptic_standard(pred.pred_logits, pred.pred_masks, pred.true_shape))
    segs = json.loads((out / "segments.json").read_text())
    assert sorted(int(k) for k in segs) == [s["id"] for s in res.segments]
    for s in res.segments:
        e = segs[str(s["id"])]
        assert e["class_id"] == s["category_id"] + 1 and e["class_name"] == names[s["category_id"]]
        assert e["area"] == s["area"] and e["query_id"] == s["query_id"]
    cams = json.loads((out / "cameras.json").read_text())
    pm = np.load(out / "pointmaps.npz")
    assert pm["pts3d"].shape == (3, 48, 64, 3) and pm["conf"].shape == (3, 48, 64)
    np.testing.assert_allclose(pm["pts3d"], pred.pts3d.numpy(), rtol=1e-5, atol=1e-5)
    for v, (p, (w0, h0)) in enumerate(zip(paths, [(96, 72), (96, 72), (100, 60)])):
        inst, sem = read_png(out / "instance" / f"{p.stem}.png"), read_png(out / "semantics" / f"{p.stem}.png")
        assert inst.dtype == np.uint16 and sem.dtype == np.uint8 and inst.shape == sem.shape == (h0, w0)
        x0, y0, cw, ch = cams[p.stem]["crop_xywh"]
        assert cams[p.stem]["scale_to_original"] == pytest.approx(cw / 64)
        if (h0, w0) == (72, 96):  # same aspect: exact 1.5x nearest upscaling of the network map
            assert (x0, y0, cw, ch) == (0, 0, 96, 72)
            idx_r = (np.arange(72) * 48 // 72)
            idx_c = (np.arange(96) * 64 // 96)
            np.testing.assert_array_equal(inst, res.pan[v][idx_r][:, idx_c])
        else:  # centre crop 80x60 of the 100x60 image; 10 px void bands left and right
            assert (x0, y0, cw, ch) == (10, 0, 80, 60)
            assert (inst[:, :10] == 0).all() and (inst[:, 90:] == 0).all()
        # semantics follow the segment table
        lut = {0: 0, **{int(k): e["class_id"] for k, e in segs.items()}}
        np.testing.assert_array_equal(sem, np.vectorize(lut.get)(inst).astype(np.uint8))
        conf = np.load(out / "confidence" / f"{p.stem}.npy")
        np.testing.assert_allclose(conf, res.conf[v], atol=1e-3)
        assert Image.open(out / "preview" / f"{p.stem}.jpg").size == (64, 48)
        K, c2w = np.array(cams[p.stem]["K"]), np.array(cams[p.stem]["c2w"])
        assert K[0, 2] == 32.5 and K[1, 2] == 24.5 and np.isfinite(K).all()
        np.testing.assert_allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-9)
    ids = set(np.unique(np.concatenate([read_png(out / "instance" / f"{s}.png").ravel() for s in stems])).tolist())
    assert ids - {0} <= {int(k) for k in segs}


def test_load_images_official_crop_and_range(tmp_path):
    from panst3r.preprocess import allowed_sizes, target_size
    from panst3r.segment import load_images

    assert target_size(512, 384) == (512, 384)
    assert target_size(1920, 1080) == (512, 288)  # 16:9
    assert target_size(480, 640) == (384, 512)  # portrait: transposed size
    assert target_size(96, 72, allowed_sizes(64)) == (64, 48)
    assert allowed_sizes(512) == ((512, 384), (512, 336), (512, 288), (512, 256), (512, 160))
    p = _write_images(tmp_path, [(512, 384)])[0]
    li = load_images([p])
    raw = np.asarray(Image.open(p).convert("RGB"), dtype=np.float32)
    np.testing.assert_allclose(li.images[0].permute(1, 2, 0).numpy(), (raw / 255 - 0.5) / 0.5, atol=1e-6)
    assert li.crops == [(0, 0, 512, 384)]


def test_cli_input_errors(tmp_path, monkeypatch):
    _offline_siglip(monkeypatch, tmp_path)
    ck = tmp_path / "model.pth"
    with pytest.raises(InputError, match="images folder not found"):
        segment_command(SegmentArgs(images=tmp_path / "nope", checkpoint=ck, out=tmp_path / "o"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="no images"):
        segment_command(SegmentArgs(images=tmp_path / "empty", checkpoint=ck, out=tmp_path / "o"))
    _write_images(tmp_path / "imgs", [(64, 48)])
    with pytest.raises(InputError, match="checkpoint not found"):
        segment_command(SegmentArgs(images=tmp_path / "imgs", checkpoint=ck, out=tmp_path / "o"))
    ck.write_bytes(b"")
    with pytest.raises(InputError, match="do not store class text embeddings"):
        segment_command(SegmentArgs(images=tmp_path / "imgs", checkpoint=ck, out=tmp_path / "o"))
    with pytest.raises(InputError, match="vocabulary file not found"):
        read_vocabulary(str(tmp_path / "classes.txt"))
    (tmp_path / "classes.txt").write_text("# mine\nchair\n\ntable\n")
    assert read_vocabulary(str(tmp_path / "classes.txt")) == ["chair", "table"]
    assert read_vocabulary("panlift")[:2] == ["wall", "floor"] and len(read_vocabulary("panlift")) == 21
    np.save(tmp_path / "emb.npy", np.zeros((3, 8), np.float32))
    with pytest.raises(InputError, match="3 embeddings for 2 classes"):
        load_text_embeddings(tmp_path / "emb.npy", ["chair", "table"])
    assert load_text_embeddings(tmp_path / "emb.npy", ["a", "b", "c"]).shape == (3, 8)
    assert [p.name for p in list_images(tmp_path / "imgs")] == ["view0.png"]
    assert not (tmp_path / "o").exists()


def test_segment_args_parse_with_tyro(tmp_path):
    import tyro

    a = tyro.cli(SegmentArgs, args=["--images", str(tmp_path), "--checkpoint", "c.pth", "--out", "o",
                                    "--merge", "qubo", "--keyframes", "4", "--keyframe-method", "fps"])
    assert a.merge == "qubo" and a.keyframes == 4 and a.keyframe_method == "fps" and a.vocabulary == "panlift"


def test_segment_command_end_to_end(tmp_path):
    """`python -m pipeline segment --images DIR --checkpoint PATH --out DIR` on a saved tiny checkpoint."""
    from panst3r.checkpoint import save

    model = _tiny_model("v2")
    ckpt = save(model, tmp_path / "tiny_v2.pth")
    _write_images(tmp_path / "imgs", [(96, 72)] * 3)
    np.save(tmp_path / "emb.npy", np.random.default_rng(0).standard_normal((21, 16)).astype(np.float32))
    cmd = [sys.executable, "-m", "pipeline", "segment", "--images", str(tmp_path / "imgs"), "--checkpoint", str(ckpt),
           "--out", str(tmp_path / "out"), "--text-embeddings", str(tmp_path / "emb.npy"), "--size", "64",
           "--merge", "standard_v2", "--no-progress"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"segmented 3 images into {tmp_path / 'out'}" in p.stdout
    out = tmp_path / "out"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["variant"] == "v2" and meta["network_hw"] == [48, 64] and meta["class_ids"] == list(range(1, 22))
    assert meta["keyframes"] == ["view0", "view1", "view2"] and (out / "pointmaps.npz").is_file()
    segs = json.loads((out / "segments.json").read_text())
    from pipeline.common.classes import PANLIFT_CLASSES

    for v in segs.values():  # --vocabulary panlift: class ids are PanLift ids
        assert PANLIFT_CLASSES[v["class_id"]] == v["class_name"]
    for i in range(3):
        inst = read_png(out / "instance" / f"view{i}.png")
        assert inst.shape == (72, 96) and set(np.unique(inst).tolist()) - {0} <= {int(k) for k in segs}
    # a checkpoint's text width is checked against the embeddings before any image is segmented
    np.save(tmp_path / "wide.npy", np.zeros((21, 8), np.float32))
    with pytest.raises(InputError, match="8 wide but .* expects 16"):
        segment_command(SegmentArgs(images=tmp_path / "imgs", checkpoint=ckpt, out=tmp_path / "o2",
                                    text_embeddings=tmp_path / "wide.npy", progress=False))
    assert not (tmp_path / "o2").exists()


def test_checkpoint_image_size(tmp_path):
    from panst3r.checkpoint import constructor_strings, save
    from panst3r.segment import checkpoint_image_size

    model = _tiny_model("v1")
    assert checkpoint_image_size(save(model, tmp_path / "a.pth")) == 512  # the released layout: 512 models
    strings = {k: v.replace("img_size=[512, 512]", "img_size=[224, 160]") for k, v in
               constructor_strings(model.config).items()}
    torch.save({"weights": model.state_dict(), "args": argparse.Namespace(**strings)}, tmp_path / "b.pth")
    assert checkpoint_image_size(tmp_path / "b.pth") == 224
    torch.save({"weights": model.state_dict()}, tmp_path / "c.pth")
    assert checkpoint_image_size(tmp_path / "c.pth", default=384) == 384


def test_vocabulary_files(tmp_path, monkeypatch):
    from panst3r.cli import class_vocabulary
    from panst3r.text import save_embeddings

    _offline_siglip(monkeypatch, tmp_path)
    with pytest.raises(InputError, match="do not store class text embeddings.*pass --segment.vocabulary X"):
        class_vocabulary("panlift", how="--segment.vocabulary X")
    emb = torch.randn(3, 16)
    save_embeddings(tmp_path / "v.pt", emb, ["chair", "armchair", "zebra"])
    v = class_vocabulary(str(tmp_path / "v.pt"))
    assert v.names == ["chair", "armchair", "zebra"] and v.class_ids == [1, 2, 3]
    torch.testing.assert_close(v.embeddings, emb)
    v = class_vocabulary(str(tmp_path / "v.pt"), panlift_ids=True)
    from panst3r.text import map_to_panlift

    assert v.class_ids == map_to_panlift(["chair", "armchair", "zebra"]) and v.class_ids[0] == 5 and v.class_ids[2] == 21
    torch.save(emb, tmp_path / "bare.pt")
    with pytest.raises(InputError, match="must hold"):
        class_vocabulary(str(tmp_path / "bare.pt"))


def test_load_images_unreadable_file_is_one_line(tmp_path):
    from panst3r.segment import load_images

    good = _write_images(tmp_path, [(96, 72)])[0]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(InputError, match=r"broken\.png: cannot read image .*re-export it"):
        load_images([good, bad], size=64)
