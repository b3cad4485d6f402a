"""A user's mistakes, fed to the command line as a table: each one must end with exit code != 0, no traceback,
a last stderr line `error: ...` that names the culprit and the fix, and nothing written or changed anywhere
(the folders a case points at are compared file by file before and after).

The table runs through `pipeline.cli.main` in this process (one torch import for all cases);
`test_real_process` runs a few rows through `python -m pipeline` in a subprocess to show the two agree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[2]
DEMO_YAML = str(REPO / "configs" / "demo.yaml")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The inputs the mistakes are made with: a tiny synthetic scene and variations of it."""
    from pipeline.synth import generate, make_config

    w = tmp_path_factory.mktemp("user_errors")
    scene = generate(w / "scene", make_config("tiny", 0))
    split = json.loads((scene / "splits.json").read_text())
    pred = w / "pred"  # GT copied as predictions: a valid prediction folder
    shutil.copytree(scene / "rs_semantics", pred / "pred_semantics")
    shutil.copytree(scene / "rs_instance", pred / "pred_surrogateid")
    (w / "ns").mkdir()
    (w / "ns" / "transforms.json").write_text('{"frames": []}')
    bad = w / "badimg"
    shutil.copytree(scene, bad)
    first = sorted((bad / "color").iterdir())[0]
    first.write_bytes(b"\xff\xd8 this is not a JPEG any more")
    small = w / "masks_small"
    for what, dtype in (("semantics", np.uint8), ("instance", np.uint16)):
        (small / what).mkdir(parents=True)
        for stem in split["train"]:
            Image.fromarray(np.ones((40, 40), dtype)).save(small / what / f"{stem}.png")
    (w / "masks_none").mkdir()
    shutil.copytree(scene, w / "badsplit")
    (w / "badsplit" / "splits.json").write_text('{"train": [')
    fake = w / "fakerun"  # what export checks exists; content is never read when --out is refused first
    for rel in ("splat/gaussians.ply", "uplift/uplift.npz", "uplift/legend.json"):
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        (fake / rel).write_bytes(b"")
    huge = w / "hugerun" / "uplift"
    huge.mkdir(parents=True)
    (huge / "labelled.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 3000000000\n"
                                        b"property float x\nproperty float y\nproperty float z\nend_header\n"
                                        + b"\0" * 120)
    (w / "garbage.pth").write_text("this is a text file, not a checkpoint\n")
    (w / "ckptdir.pth").mkdir()
    (w / "images").mkdir()
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(w / "images" / "a.png")
    cfgs = {"broken.yaml": "scene:\n  path: [unclosed\n", "list.yaml": "- scene\n- splat\n",
            "unknown.yaml": "splat:\n  bogus: 1\n", "wrongtype.yaml": "splat:\n  train:\n    iterations: many\n",
            "table.yaml": f"datasets:\n  synth:\n    config: {DEMO_YAML}\n    folder: .\n    scenes: [scene]\n"}
    for name, text in cfgs.items():
        (w / name).write_text(text)
    return w


def _user_folder(c: Path) -> None:
    (c / "mine").mkdir()
    (c / "mine" / "notes.txt").write_text("my notes\n")


def _user_file(c: Path) -> None:
    (c / "afile").write_text("my file\n")


def _user_json(c: Path) -> None:
    (c / "result.json").write_text('{"pq": 0.5, "mine": true}\n')


@dataclass
class Case:
    name: str
    argv: list[str]  # {W} = the world folder, {S} = the scene, {C} = this case's own folder (also the cwd)
    culprit: str  # must appear in the last line: the file, folder, field or flag at fault
    fix: str  # must appear in the last line: what to do instead
    setup: Callable[[Path], None] | None = None


RUN = ["run", DEMO_YAML, "--scene.path", "{S}", "--output.dir", "{C}/out"]
CASES = [
    Case("run-no-config", ["run"], "run needs a config file", "python -m pipeline run CONFIG.yaml"),
    Case("run-config-missing", ["run", "{C}/nope.yaml"], "{C}/nope.yaml", "configs/"),
    Case("run-config-is-folder", ["run", "{W}"], "{W}: is a directory", "expected a YAML file"),
    Case("run-broken-yaml", ["run", "{W}/broken.yaml"], "{W}/broken.yaml: invalid YAML", "line"),
    Case("run-yaml-not-mapping", ["run", "{W}/list.yaml"], "{W}/list.yaml", "mapping"),
    Case("run-unknown-field", ["run", "{W}/unknown.yaml"], "'splat.bogus'", "valid keys of 'splat'"),
    Case("run-wrong-type-yaml", ["run", "{W}/wrongtype.yaml"], "splat.train.iterations", "must be an integer"),
    Case("run-wrong-type-flag", RUN + ["--splat.train.iterations", "many"], "--splat.train.iterations",
         "python -m pipeline run CONFIG.yaml --help"),
    Case("run-unknown-flag", RUN + ["--splat.bogus", "1"], "--splat.bogus", "--help"),
    Case("run-bad-choice", RUN + ["--scene.format", "bogus"], "--scene.format 'bogus'", "auto, panlift, nerfstudio"),
    Case("run-from-bogus", RUN + ["--from", "bogus"], "--from 'bogus'", "use one of segment"),
    Case("run-scene-missing", ["run", DEMO_YAML, "--scene.path", "{C}/noscene", "--output.dir", "{C}/out"],
         "{C}/noscene: scene folder does not exist", "make demo"),
    Case("run-scene-is-file", ["run", DEMO_YAML, "--scene.path", "{C}/afile", "--scene.format", "auto",
                               "--output.dir", "{C}/out"], "{C}/afile: not a scene folder", "synth", _user_file),
    Case("run-scene-empty", ["run", DEMO_YAML, "--scene.path", "{C}", "--scene.format", "auto", "--output.dir",
                             "{W}/never"], "{C}: not a scene folder", "python -m pipeline synth DIR"),
    Case("run-format-pinned", ["run", DEMO_YAML, "--scene.path", "{W}/ns", "--output.dir", "{C}/out"],
         "{W}/ns: looks like a nerfstudio scene", "--scene.format auto"),
    Case("run-unreadable-image", ["run", DEMO_YAML, "--scene.path", "{W}/badimg", "--output.dir", "{C}/out"],
         "{W}/badimg/color/", "re-export it"),
    Case("run-output-is-file", RUN[:-1] + ["{C}/afile"], "{C}/afile: exists and is not a folder",
         "pass a folder path", _user_file),
    Case("run-output-below-file", RUN[:-1] + ["{C}/afile/run"], "{C}/afile is a file", "pass a path inside a folder",
         _user_file),
    Case("run-output-user-folder", RUN[:-1] + ["{C}/mine"], "{C}/mine: folder is not empty",
         "pass a new or empty folder", _user_folder),
    Case("run-output-cwd", RUN[:-1] + ["."], "{C}: is the current folder", "pass a subfolder", _user_folder),
    Case("run-masks-wrong-size", RUN + ["--segment.kind", "precomputed", "--segment.path", "{W}/masks_small"],
         "{W}/masks_small/instance/", "write masks at the image size"),
    Case("run-masks-missing", RUN + ["--segment.kind", "precomputed", "--segment.path", "{W}/masks_none"],
         "{W}/masks_none/semantics/", "write semantics/<stem>.png and instance/<stem>.png"),
    Case("run-precomputed-no-path", RUN + ["--segment.kind", "precomputed"], "segment.kind precomputed",
         "--segment.path DIR"),
    Case("run-panst3r-no-checkpoint", RUN + ["--segment.kind", "panst3r"], "segment.kind panst3r",
         "--segment.checkpoint PATH"),
    Case("run-panst3r-wrong-checkpoint", RUN + ["--segment.kind", "panst3r", "--segment.checkpoint",
                                                "{W}/garbage.pth"], "{W}/garbage.pth: not a PyTorch checkpoint",
         "pass a PanSt3R .pth file"),
    Case("run-panst3r-checkpoint-folder", RUN + ["--segment.kind", "panst3r", "--segment.checkpoint",
                                                 "{W}/ckptdir.pth"], "{W}/ckptdir.pth: is a folder",
         "pass the checkpoint file itself"),
    Case("demo-out-file", ["demo", "--out", "{C}/afile", "--preset", "tiny"], "{C}/afile: exists and is not a folder",
         "pass a folder path", _user_file),
    Case("demo-out-user-folder", ["demo", "--out", "{C}/mine", "--preset", "tiny"], "{C}/mine: folder is not empty",
         "pass a new or empty folder", _user_folder),
    Case("eval-json-folder", ["eval", "--scene", "{S}", "--pred", "{W}/pred", "--json", "{C}"], "{C}: is a folder",
         "pass a file path"),
    Case("eval-json-user-file", ["eval", "--scene", "{S}", "--pred", "{W}/pred", "--json", "{C}/result.json"],
         "{C}/result.json: exists and was not written by", "pass a new file path", _user_json),
    Case("eval-pred-missing", ["eval", "--scene", "{S}", "--pred", "{C}/nopred"], "{C}/nopred", "pred_semantics/"),
    Case("eval-missing-flag", ["eval", "--scene", "{S}"], "--pred", "python -m pipeline eval --help"),
    Case("export-run-missing", ["export", "{C}/norun"], "{C}/norun/splat/gaussians.ply: missing",
         "python -m pipeline run CONFIG.yaml"),
    Case("export-out-user-folder", ["export", "{W}/fakerun", "--out", "{C}/mine"], "{C}/mine: folder is not empty",
         "pass a new or empty folder", _user_folder),
    Case("export-out-file", ["export", "{W}/fakerun", "--out", "{C}/afile"], "{C}/afile: exists and is not a folder",
         "pass a folder path", _user_file),
    Case("export-out-cwd", ["export", "{W}/fakerun", "--out", "."], "{C}: is the current folder", "pass a subfolder",
         _user_folder),
    Case("synth-out-user-folder", ["synth", "{C}/mine", "--preset", "tiny"], "{C}/mine: exists and is not a "
         "synthetic scene", "choose a new or empty folder", _user_folder),
    Case("synth-out-file", ["synth", "{C}/afile", "--preset", "tiny"], "{C}/afile: exists and is not a synthetic scene",
         "choose a new or empty folder", _user_file),
    Case("synth-bad-preset", ["synth", "{C}/s", "--preset", "huge"], "huge", "--help"),
    Case("view-no-run", ["view", "{C}/norun"], "{C}/norun: no uplift/labelled.ply", "python -m pipeline run"),
    Case("view-huge-ply-header", ["view", "{W}/hugerun"], "{W}/hugerun/uplift/labelled.ply: the PLY header claims "
         "3,000,000,000 vertex", "re-export the Gaussians"),
    Case("table-config-missing", ["table", "{C}/nope.yaml", "--data-root", "{W}"], "{C}/nope.yaml",
         "configs/panlift.yaml"),
    Case("table-data-root-missing", ["table", "{W}/table.yaml", "--data-root", "{C}/nodata"], "{C}/nodata",
         "--data-root DIR"),
    Case("table-out-user-folder", ["table", "{W}/table.yaml", "--data-root", "{W}", "--out", "{C}/mine"],
         "{C}/mine", "new or empty", _user_folder),
    Case("table-out-file", ["table", "{W}/table.yaml", "--data-root", "{W}", "--out", "{C}/afile"],
         "{C}/afile", "folder", _user_file),
    Case("sweep-out-user-folder", ["sweep", str(REPO / "configs" / "sweep_ablation.yaml"), "--out", "{C}/mine"],
         "{C}/mine", "new or empty", _user_folder),
    Case("sweep-out-file", ["sweep", str(REPO / "configs" / "sweep_ablation.yaml"), "--out", "{C}/afile"],
         "{C}/afile", "folder", _user_file),
    Case("segment-images-missing", ["segment", "--images", "{C}/noimg", "--checkpoint", "{W}/garbage.pth", "--out",
                                    "{C}/seg"], "{C}/noimg: images folder not found", "--images DIR"),
    Case("segment-out-user-folder", ["segment", "--images", "{W}/images", "--checkpoint", "{W}/garbage.pth", "--out",
                                     "{C}/mine"], "{C}/mine: folder is not empty", "pass a new or empty folder",
         _user_folder),
    Case("segment-wrong-checkpoint", ["segment", "--images", "{W}/images", "--checkpoint", "{W}/garbage.pth",
                                      "--out", "{C}/seg"], "{W}/garbage.pth: not a PyTorch checkpoint",
         "pass a PanSt3R .pth file"),
    Case("run-negative-iterations", RUN + ["--splat.train.iterations", "-5"], "--splat.train.iterations -5",
         "must be >= 0"),
    Case("export-negative-topk", ["export", "{W}/fakerun", "--topk", "-1", "--out", "{C}/exp"], "--topk -1",
         "must be >= 0"),
    Case("view-port-out-of-range", ["view", "{W}/hugerun", "--port", "99999"], "--port 99999",
         "between 1 and 65535"),
    Case("run-broken-splits", ["run", DEMO_YAML, "--scene.path", "{W}/badsplit", "--output.dir", "{C}/out"],
         "{W}/badsplit/splits.json: invalid JSON", "line"),
    Case("unknown-subcommand", ["segmnet"], "segmnet", "Available subcommands"),
]


def _snapshot(*roots: Path) -> dict[str, tuple]:
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                out[str(p)] = (p.is_dir(), st.st_size, st.st_mtime_ns)
    return out


def _prepare(case: Case, world: Path, tmp_path: Path) -> tuple[list[str], str, str]:
    c = tmp_path / "case"
    c.mkdir()
    if case.setup:
        case.setup(c)
    sub = {"{W}": str(world), "{S}": str(world / "scene"), "{C}": str(c)}

    def fill(s: str) -> str:
        for k, v in sub.items():
            s = s.replace(k, v)
        return s

    return [fill(a) for a in case.argv], fill(case.culprit), fill(case.fix)


def _check(code: int, err: str, culprit: str, fix: str) -> None:
    assert code not in (0, None), err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err
    assert culprit in last, f"culprit {culprit!r} not named in: {last}"
    assert fix in last, f"fix {fix!r} not given in: {last}"


def test_the_table_is_big_enough():
    assert len(CASES) >= 25 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_user_mistake(case, world, tmp_path, monkeypatch, capsys):
    argv, culprit, fix = _prepare(case, world, tmp_path)
    monkeypatch.chdir(tmp_path / "case")
    monkeypatch.delenv("PIPELINE_DEBUG", raising=False)
    before = _snapshot(world, tmp_path)
    try:
        code = main(argv)
    except SystemExit as e:  # what `python -m pipeline` would exit with
        code = e.code
    err = capsys.readouterr().err
    _check(code, err, culprit, fix)
    after = _snapshot(world, tmp_path)
    assert after == before, f"written or changed: {sorted(set(after) ^ set(before)) or 'file contents'}"


@pytest.mark.parametrize("name", ["run-output-user-folder", "export-out-cwd", "eval-json-folder"])
def test_real_process(name, world, tmp_path):
    """The same rows through `python -m pipeline` as a user runs it: exit status 2, one line, nothing written."""
    case = next(c for c in CASES if c.name == name)
    argv, culprit, fix = _prepare(case, world, tmp_path)
    before = _snapshot(world, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PIPELINE_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "pipeline", *argv], cwd=tmp_path / "case", env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    _check(proc.returncode, proc.stderr, culprit, fix)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert _snapshot(world, tmp_path) == before


def test_eval_json_replaces_only_its_own_file(world, tmp_path, capsys):
    """The eval --json rule: a new path is written (with the `written_by` key); that file, being this command's
    own output, may be replaced by the next eval; a user's JSON at that path never is."""
    from pipeline.common.io import OUTPUT_FILE_KEY, InputError
    from pipeline.metrics import eval_command

    out = tmp_path / "e.json"
    eval_command(world / "scene", world / "pred", out)
    first = json.loads(out.read_text())
    assert first[OUTPUT_FILE_KEY] == "pipeline eval" and first["pq"] == 1.0
    out.write_text(json.dumps({**first, "pq": -1}))  # our own file, changed: replaced by the next eval
    eval_command(world / "scene", world / "pred", out)
    assert json.loads(out.read_text())["pq"] == 1.0
    out.write_text(json.dumps({"pq": -1}))  # a user's JSON of the same shape but without the key
    with pytest.raises(InputError, match="was not written by `pipeline eval`"):
        eval_command(world / "scene", world / "pred", out)
    assert json.loads(out.read_text()) == {"pq": -1}


def test_doctor_does_not_call_panst3r_ready_without_text_embeddings():
    """doctor said "SigLIP text weights: no" and then "segment (panst3r): yes, ready"; the two must agree."""
    from pipeline.doctor import stage_checks

    facts = {"transformers": True, "siglip": False, "matplotlib": True, "viser": True}
    rows = {c.name: c for c in stage_checks(facts)}
    for name in ("segment (panst3r)", "render_then_segment"):
        assert not rows[name].ok and "class text embeddings" in rows[name].detail
        assert "--segment.text-embeddings FILE" in rows[name].detail
    assert "class text embeddings" not in rows["segment (panst3r)"].detail.split("(also needs")[0].replace(
        "class text embeddings", "", 1)  # said once, not twice
    rows = {c.name: c for c in stage_checks({**facts, "siglip": True})}
    assert "class text embeddings" not in rows["segment (panst3r)"].detail


def test_panst3r_run_without_class_embeddings_fails_before_any_work(world, tmp_path, monkeypatch, capsys):
    """A machine without SigLIP and no --segment.text-embeddings: one short line (no model-hub URL), checkpoint
    judged first, and the run folder never created."""
    import torch

    import panst3r.text as text
    from pipeline.common.io import InputError as IE

    def unavailable(model, device):
        raise IE(f"{model}: SigLIP tokenizer not available offline (see https://huggingface.co/{model})")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(text, "_text_model", unavailable)
    ckpt = tmp_path / "model.pth"
    torch.save({"weights": {}}, ckpt)  # a torch file: passes the format look, the embeddings are what is missing
    out = tmp_path / "out"
    args = ["run", DEMO_YAML, "--scene.path", str(world / "scene"), "--output.dir", str(out),
            "--segment.kind", "panst3r", "--segment.checkpoint"]
    assert main(args + [str(world / "garbage.pth")]) == 2  # a wrong checkpoint is named first
    assert "garbage.pth: not a PyTorch checkpoint" in capsys.readouterr().err
    assert main(args + [str(ckpt)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: no class text embeddings: PanSt3R checkpoints do not store them")
    assert "--segment.text-embeddings FILE" in last and "http" not in last and len(last) < 320
    assert not out.exists()


def test_tyro_box_catcher_lets_a_commands_own_output_through():
    """While tyro parses, its error box is held back; the command's progress lines and messages are not."""
    import io

    from pipeline.cli import _BoxCatcher, _fold_box

    real = io.StringIO()
    c = _BoxCatcher(real)
    c.write("\rsplat:  25%|██▌       | 200/800 [00:10<00:30, 20.0step/s]")
    c.write("wrote /x/labelled.ply\n")
    box = ("╭─ Value error ──────────────────────╮\n│ Error parsing --seed: 'abc'       │\n"
           "│ ────────────────────────────────── │\n│ For full helptext, run:           │\n"
           "│     python -m pipeline synth --help │\n╰────────────────────────────────────╯")
    c.write(box)
    c.write("\n")
    assert real.getvalue() == "\rsplat:  25%|██▌       | 200/800 [00:10<00:30, 20.0step/s]wrote /x/labelled.ply\n"
    assert _fold_box("".join(c.box)) == "Error parsing --seed: 'abc'; see `python -m pipeline synth --help`"
