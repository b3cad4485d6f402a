"""Headless PanSt3R segmentation end to end with a tiny pseudo-random network, and the CLI's input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.io import InputError, read_png
from panst3r.cli import SegmentArgs, list_images, load_text_embeddings, read_vocabulary, segment_command


def _tiny_model(variant: str):
    """Tiny pseudo-random network: `panst3r.build_model` (the package API), else the model class itself."""
    try:
        from panst3r.model import PanSt3R, tiny_config
    except ImportError as e:
        pytest.skip(f"the PanSt3R network (panst3r.model: PanSt3R, tiny_config) is not available: {e}")
    torch.manual_seed(0)
    try:
        from panst3r import build_model
    except ImportError:
        return PanSt3R(tiny_config(variant)).eval()
    return build_model(variant, tiny_config(variant)).eval()


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
    from panst3r.segment import load_images, network_size

    assert network_size(384, 512) == (384, 512)
    assert network_size(1080, 1920) == (288, 512)  # 16:9
    assert network_size(640, 480) == (512, 384)  # portrait: transposed size
    assert network_size(72, 96, size=64) == (48, 64)
    p = _write_images(tmp_path, [(512, 384)])[0]
    li = load_images([p])
    raw = np.asarray(Image.open(p).convert("RGB"), dtype=np.float32)
    np.testing.assert_allclose(li.images[0].permute(1, 2, 0).numpy(), (raw / 255 - 0.5) / 0.5, atol=1e-6)
    assert li.crops == [(0, 0, 512, 384)]


def test_cli_input_errors(tmp_path):
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
    with pytest.raises(InputError, match="vocabulary has 2 classes"):
        load_text_embeddings(tmp_path / "emb.npy", ["chair", "table"])
    assert load_text_embeddings(tmp_path / "emb.npy", ["a", "b", "c"]).shape == (3, 8)
    assert [p.name for p in list_images(tmp_path / "imgs")] == ["view0.png"]
    assert not (tmp_path / "o").exists()


def test_segment_args_parse_with_tyro(tmp_path):
    import tyro

    a = tyro.cli(SegmentArgs, args=["--images", str(tmp_path), "--checkpoint", "c.pth", "--out", "o",
                                    "--merge", "qubo", "--keyframes", "4", "--keyframe-method", "fps"])
    assert a.merge == "qubo" and a.keyframes == 4 and a.keyframe_method == "fps" and a.classes == "panlift"
