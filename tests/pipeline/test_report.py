import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.report import error_map, write_report


def _scene(root: Path, stems, h=12, w=16):
    for d in ("color", "pose", "intrinsic", "rs_semantics", "rs_instance"):
        (root / d).mkdir(parents=True)
    np.savetxt(root / "intrinsic/intrinsic_color.txt", np.array([[10, 0, 7.5, 0], [0, 10, 5.5, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]))
    sem = np.full((h, w), 1, np.uint8)
    sem[4:10, 3:8] = 5
    inst = np.zeros((h, w), np.uint16)
    inst[4:10, 3:8] = 1
    for s in stems:
        Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(root / f"color/{s}.jpg")
        np.savetxt(root / f"pose/{s}.txt", np.eye(4))
        Image.fromarray(sem).save(root / f"rs_semantics/{s}.png")
        Image.fromarray(inst).save(root / f"rs_instance/{s}.png")
    (root / "splits.json").write_text(json.dumps({"train": stems[1:], "test": stems[:1]}))
    return sem, inst


def _run(tmp_path):
    scene = tmp_path / "scene"
    sem, inst = _scene(scene, ["0", "1", "2"])
    run = tmp_path / "run"
    (run / "render/pred_semantics").mkdir(parents=True)
    (run / "render/pred_surrogateid").mkdir(parents=True)
    (run / "render/rgb").mkdir(parents=True)
    (run / "segment/instance").mkdir(parents=True)
    (run / "splat").mkdir(parents=True)
    psem = sem.copy()
    psem[0, :4] = 2  # a few wrong-class pixels
    Image.fromarray(psem).save(run / "render/pred_semantics/0.png")
    Image.fromarray(inst).save(run / "render/pred_surrogateid/0.png")
    Image.fromarray(np.full(sem.shape + (3,), 90, np.uint8)).save(run / "render/rgb/0.png")
    for s in ("1", "2"):
        Image.fromarray((inst + 3).astype(np.uint16)).save(run / f"segment/instance/{s}.png")
    (run / "config.yaml").write_text(yaml.safe_dump({"scene": {"path": str(scene)}, "segment": {"kind": "simulated"}}))
    metrics = {
        "uplift": {"pq": 0.8125, "sq": 0.9, "rq": 0.875, "pq_th": 0.75, "pq_st": 0.875, "miou": 0.6,
                   "per_class": {"1": {"name": "wall", "pq": 0.875, "sq": 0.9, "rq": 1.0, "tp": 1, "fp": 0, "fn": 0, "thing": False},
                                 "5": {"name": "chair", "pq": 0.75, "sq": 0.8, "rq": 1.0, "tp": 1, "fp": 0, "fn": 0, "thing": True}}},
        "segmenter_on_test": {"pq": 0.4321, "sq": 0.7, "rq": 0.6, "pq_th": 0.3, "pq_st": 0.5, "miou": 0.5},
        "render_then_segment": {"skipped": "the simulated segmenter cannot segment rendered images"},
        "psnr": 26.54, "num_gaussians": 12345, "timings_s": {"segment": 1.5, "splat": 100.25}, "peak_rss_mb": {"splat": 900},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "splat/history.json").write_text(json.dumps([{"step": i, "loss": 1 / (i + 1), "psnr": 10 + i} for i in range(20)]))
    return run


def test_error_map_colours():
    gs = np.array([[0, 5, 5, 1]])
    gi = np.array([[0, 1, 1, 0]])
    ps = np.array([[3, 5, 5, 2]])
    pi = np.array([[0, 7, 8, 0]])
    em = error_map(ps, pi, gs, gi)
    assert tuple(em[0, 0]) == (0, 0, 0)  # GT void
    assert tuple(em[0, 3]) == (200, 30, 30)  # wrong class
    # right class; instance 7 and 8 tie -> the first (7) is the majority id, 8 is marked wrong-instance
    assert tuple(em[0, 1]) == (30, 110, 40) and tuple(em[0, 2]) == (240, 150, 20)


def test_report_contents_self_contained(tmp_path):
    run = _run(tmp_path)
    out = write_report(run)
    page = out.read_text()
    assert "81.2" in page and "43.2" in page and "26.54 dB" in page and "12,345 Gaussians" in page
    assert "5 chair" in page and "1 wall" in page and "SIMULATED" in page
    assert "render-then-segment skipped: the simulated segmenter" in page
    assert not re.search(r"(src|href)=\"https?://", page)
    imgs = re.findall(r"data:image/png;base64,", page)
    assert len(imgs) == 4 + 2 + 1  # test view quad + 2 contact-sheet tiles + training curve
    md = (run / "report.md").read_text()
    assert "report_assets/0_error.png" in md and (run / "report_assets/0_error.png").is_file()


def test_report_missing_pieces_are_notes(tmp_path):
    run = tmp_path / "empty_run"
    run.mkdir()
    page = write_report(run).read_text()
    assert "No evaluation in this run" in page and "No rendered test views" in page and "No training history" in page


def _labelled(run: Path):
    """uplift/legend.json and uplift/labelled.ply for the fixture: instance 1 (chair) with 3 Gaussians of
    confidence 0.5, 0.7, 0.9 (mean 0.7); 2 wall Gaussians (instance 2)."""
    from plyfile import PlyData, PlyElement

    (run / "uplift").mkdir(parents=True, exist_ok=True)
    legend = {"num_gaussians": 6, "num_unlabelled": 1, "bbox_percentiles": [1.0, 99.0],
              "num_labelled_per_class": {"1": 2, "5": 3},
              "instances": {"1": {"class_id": 5, "class_name": "chair", "num_gaussians": 3,
                                  "bbox_min": [0.0, -1.0, 0.5], "bbox_max": [1.25, 1.0, 2.0]},
                            "2": {"class_id": 1, "class_name": "wall", "num_gaussians": 2,
                                  "bbox_min": [-3.0, -3.0, 0.0], "bbox_max": [3.0, 3.0, 2.5]},
                            "3": {"class_id": 5, "class_name": "chair", "num_gaussians": 0,
                                  "bbox_min": None, "bbox_max": None}}}  # an instance no Gaussian kept
    (run / "uplift/legend.json").write_text(json.dumps(legend))
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    arr = np.zeros(6, dtype=[(k, "f4") for k in names] + [("instance_id", "i4"), ("class_id", "i4"),
                                                           ("label_confidence", "f4")])
    arr["rot_0"] = 1
    arr["instance_id"] = [1, 1, 1, 2, 2, -1]
    arr["label_confidence"] = [0.5, 0.7, 0.9, 0.25, 0.75, 0.0]
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(run / "uplift/labelled.ply"))


def _swatches(page: str) -> dict[str, tuple[int, int, int]]:
    """Colour-key rows of the page: id label -> swatch colour."""
    rows = re.findall(r"background:rgb\((\d+), (\d+), (\d+)\)\"></span></td><td>([^<]+)</td>", page)
    return {label: (int(r), int(g), int(b)) for r, g, b, label in rows}


def _unblend(img: np.ndarray, base: int, alpha: float = 0.55) -> np.ndarray:
    """The overlay colour under a blended pixel over a flat grey `base` (labels.overlay's alpha)."""
    return (img.astype(np.float64) - (1 - alpha) * base) / alpha


def test_colour_key_instance_table_and_same_colours_everywhere(tmp_path):
    run = _run(tmp_path)
    sem, inst = _scene(tmp_path / "unused", ["0"])
    (run / "segment/semantics").mkdir()
    for s in ("1", "2"):  # the segmenter's ids are the uplift's (LUDVIG uplifts the segmenter's masks)
        Image.fromarray(sem).save(run / f"segment/semantics/{s}.png")
        Image.fromarray(inst).save(run / f"segment/instance/{s}.png")
    _labelled(run)
    page = write_report(run).read_text()
    key = _swatches(page.split("Colour key")[1].split("</table>")[0])
    # fixture pixels (12 x 16 = 192): chair instance 1 = 6 x 5 = 30; 4 pixels predicted floor (class 2); wall 158
    rows = re.findall(r"<td>(instance 1|stuff 1|stuff 2)</td><td>(\w+)</td><td>([\d,]+)</td><td>([^<]+)</td>", page)
    assert rows[:3] == [("stuff 1", "wall", "158", "2"), ("instance 1", "chair", "30", "3"), ("stuff 2", "floor", "4", "–")]
    # the same object has the same colour in the key, in the test overlay and in the contact sheet
    from pipeline.common.labels import palette
    from pipeline.report import STUFF_COLOUR_BASE

    assert key["instance 1"] == tuple((palette([1])[0] * 255 + 0.5).astype(int))
    assert key["stuff 1"] == tuple((palette([STUFF_COLOUR_BASE + 1])[0] * 255 + 0.5).astype(int))
    # thing c and stuff class c (both small numbers in every scene) must not look alike
    gap = np.linalg.norm(palette(np.arange(1, 21)) - palette(STUFF_COLOUR_BASE + np.arange(1, 21)), axis=1) * 255
    assert gap.min() > 150
    pred = np.asarray(Image.open(run / "report_assets/0_pred.png").convert("RGB"))  # over the rendered grey 90
    sheet = np.asarray(Image.open(run / "report_assets/seg_1.png").convert("RGB"))  # over the scene's grey 120
    fy, fx = pred.shape[0] / 12, pred.shape[1] / 16
    sy, sx = sheet.shape[0] / 12, sheet.shape[1] / 16
    for label, (r, c) in (("instance 1", (6, 5)), ("stuff 1", (2, 12))):  # a chair pixel, a wall pixel
        at_pred = _unblend(pred[int((r + 0.5) * fy), int((c + 0.5) * fx)], 90)
        at_sheet = _unblend(sheet[int((r + 0.5) * sy), int((c + 0.5) * sx)], 120)
        np.testing.assert_allclose(at_pred, key[label], atol=2)
        np.testing.assert_allclose(at_sheet, key[label], atol=2)
    gt = np.asarray(Image.open(run / "report_assets/0_gt.png").convert("RGB"))  # GT stuff: the prediction's colours
    np.testing.assert_allclose(_unblend(gt[int(2.5 * fy), int(12.5 * fx)], 90), key["stuff 1"], atol=2)
    # per-instance table: class, Gaussians, box, size, mean label confidence (0.5, 0.7, 0.9 -> 0.70)
    assert ("<td>1</td><td>chair</td><td>3</td><td>(0.00, -1.00, 0.50) – (1.25, 1.00, 2.00)</td>"
            "<td>1.25 × 2.00 × 1.50</td><td>0.70</td>") in page
    assert "<td>2</td><td>wall</td><td>2</td>" in page and "<td>0.50</td>" in page.split("<td>2</td><td>wall</td>")[1]
    assert "<td>3</td><td>chair</td><td>0</td><td>–</td><td>–</td><td>–</td>" in page
    # where the results are, and the commands that use them
    assert f"{run / 'uplift' / 'labelled.ply'}" in page and f"python -m pipeline view {run}" in page
    assert f"python -m pipeline export {run} --out {run / 'export'}" in page


def test_report_says_how_the_run_was_made(tmp_path):
    run = _run(tmp_path)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({"version": "9.9.9", "git_commit": "abc1234-dirty", **cfg}))
    (run / "command.txt").write_text("cd /x && python -m pipeline run configs/demo.yaml --splat.preset tiny\n")
    page = write_report(run).read_text()
    assert "version 9.9.9 · git commit abc1234-dirty" in page
    assert "<pre>cd /x &amp;&amp; python -m pipeline run configs/demo.yaml --splat.preset tiny</pre>" in page
    assert "<summary>resolved config (config.yaml)</summary><pre>" in page and "abc1234-dirty" in page
    md = (run / "report.md").read_text()
    assert "```\ncd /x && python -m pipeline run configs/demo.yaml --splat.preset tiny\n```" in md
    (run / "command.txt").unlink()
    assert "not recorded" in write_report(run).read_text()


def test_report_of_a_geometry_only_run(tmp_path):
    """segment.kind none: no labels anywhere, only RGB renders; the report shows RGB next to the capture."""
    run = _run(tmp_path)
    shutil.rmtree(run / "render/pred_semantics")
    shutil.rmtree(run / "render/pred_surrogateid")
    shutil.rmtree(run / "segment/instance")
    (run / "segment/info.json").write_text(json.dumps({"kind": "none"}))
    (run / "config.yaml").write_text(yaml.safe_dump({"scene": {"path": str(tmp_path / "scene")},
                                                     "segment": {"kind": "none"}}))
    (run / "metrics.json").write_text(json.dumps({"psnr": 21.5, "num_gaussians": 77, "timings_s": {"splat": 3.0}}))
    page = write_report(run).read_text()
    assert "Geometry-only run" in page and "21.50 dB" in page and "Colour key" not in page
    assert "0_rgb" in page and "0_captured" in page and "0_pred" not in page
    assert len(re.findall(r"data:image/png;base64,", page)) == 2 + 1  # rgb | captured, and the training curve
    assert "No panoptic evaluation: this is a geometry-only run (segment.kind none)." in page
    assert "python -m pipeline export" not in page  # nothing labelled to export
    (run / "splat/gaussians.ply").write_bytes(b"")
    page = write_report(run).read_text()
    assert f"Gaussians (no labels in this run): {run / 'splat/gaussians.ply'}" in page
    assert f"python -m pipeline view {run}" in page and "python -m pipeline export" not in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.xfail(_chromium() is None, strict=True, reason="NOT CHECKED: chromium is not installed, so the report "
                   "was not rendered in a browser; `make test` installs it (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    exe = _chromium()
    assert exe is not None, "chromium not installed: the report's browser rendering is NOT checked"
    run = _run(tmp_path)
    _labelled(run)
    out = write_report(run)
    shot = tmp_path / "shot.png"
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={shot}",
                    "--window-size=1280,4000", out.as_uri()], check=True, capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("RGB")).astype(np.int32)
    assert img.shape[:2] == (4000, 1280)
    assert img.std() > 10  # not a blank page
    # the colour key's swatches are drawn: the chair's colour appears on the page, unblended, as a solid patch
    from pipeline.common.labels import palette

    chair = (palette([1])[0] * 255 + 0.5).astype(np.int32)
    patch = np.all(np.abs(img - chair) <= 2, axis=-1)
    assert patch.sum() >= 200, "the colour key's swatch for instance 1 is not on the rendered page"
