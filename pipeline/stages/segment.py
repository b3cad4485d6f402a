"""segment: consistent (class, instance) maps for the train (and test) views, from masks on disk or PanSt3R."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..cache import StageContext, scene_geometry_digest, scene_layout_digest
from ..common.classes import PANLIFT_CLASSES, THING_IDS
from ..common.io import InputError, read_png, write_json, write_png
from ..common.labels import id_classes, majority_class, resize_nearest
from .shared import class_names, progress

__all__ = ["segment_inputs", "segment_run", "validate_segment_inputs", "load_panst3r", "panst3r_pass",
           "panst3r_inputs"]


def _mask_source(ctx: StageContext) -> Path:
    sc = ctx.cfg.segment
    if sc.kind == "simulated":
        src = sc.path or (ctx.scene.root / "panoptic_consistent")
        if not Path(src).is_dir():
            raise InputError(f"{src}: no simulated segmenter maps; the simulated segmenter reads a synthetic scene's "
                             "panoptic_consistent/ (generate one with `python -m pipeline synth DIR`) or pass --segment.path")
        return Path(src)
    if sc.path is None:
        raise InputError("segment.kind precomputed needs --segment.path DIR holding semantics/<stem>.png and instance/<stem>.png")
    if not Path(sc.path).is_dir():
        raise InputError(f"{sc.path}: precomputed segmentation folder does not exist; pass --segment.path DIR "
                         "holding semantics/<stem>.png (uint8) and instance/<stem>.png (uint16)")
    return Path(sc.path)


def _mask_files(src: Path, stems: list[str]) -> tuple[list[str], list[str]]:
    present = [s for s in stems if (src / "semantics" / f"{s}.png").is_file() and (src / "instance" / f"{s}.png").is_file()]
    missing = [s for s in stems if s not in set(present)]
    return present, missing


def validate_segment_inputs(ctx: StageContext) -> None:
    """Fail before any stage runs when the masks' source cannot work (a clear line, no half-written folder)."""
    sc = ctx.cfg.segment
    if sc.kind in ("simulated", "precomputed"):
        src = _mask_source(ctx)
        _, missing = _mask_files(src, ctx.scene.train)
        if missing:
            s = missing[0]
            what = "semantics" if not (src / "semantics" / f"{s}.png").is_file() else "instance"
            raise InputError(f"{src / what / (s + '.png')}: missing {what} map for train frame {s!r} "
                             f"({len(missing)} of {len(ctx.scene.train)} train frames lack maps); "
                             "write semantics/<stem>.png and instance/<stem>.png for every train frame")
    elif sc.kind == "panst3r":
        if sc.checkpoint is None:
            raise InputError("segment.kind panst3r needs --segment.checkpoint PATH to a PanSt3R checkpoint")
        if not Path(sc.checkpoint).is_file():
            raise InputError(f"{sc.checkpoint}: PanSt3R checkpoint not found; pass --segment.checkpoint PATH")
        _panst3r_merge(sc.merge)
        if sc.vocabulary != "panlift" and not Path(sc.vocabulary).is_file():
            raise InputError(f"{sc.vocabulary}: vocabulary file not found; pass --segment.vocabulary panlift, a text "
                             "file (one class name a line) or a .pt of names + embeddings (panst3r.text.save_embeddings)")
    else:  # tyro/YAML already restrict it; kept for programmatic configs
        raise ValueError(f"unknown segment kind {sc.kind!r}; use simulated, precomputed or panst3r")


def segment_inputs(ctx: StageContext) -> dict[str, str]:
    """Masks on disk: their content and the frame layout; PanSt3R: the images, checkpoint and vocabulary."""
    sc = ctx.cfg.segment
    if sc.kind == "panst3r":
        return {"scene": scene_geometry_digest(ctx.scene, ctx.hashes), **panst3r_inputs(ctx)}
    src = _mask_source(ctx)
    stems = ctx.scene.train + ctx.scene.test
    files = [src / d / f"{s}.png" for s in stems for d in ("semantics", "instance")]
    files = [p for p in files if p.is_file()]
    if (src / "segments.json").is_file():
        files.append(src / "segments.json")
    return {"scene": scene_layout_digest(ctx.scene), "masks": ctx.hashes.files(files, src)}


def _load_mask_pair(src: Path, stem: str, frame) -> tuple[np.ndarray, np.ndarray]:
    sp, ip = src / "semantics" / f"{stem}.png", src / "instance" / f"{stem}.png"
    sem, inst = read_png(sp), read_png(ip)
    if sem.ndim != 2:
        raise InputError(f"{sp}: semantics must be a single-channel uint8 PNG of class ids, got shape {sem.shape}")
    if inst.ndim != 2:
        raise InputError(f"{ip}: instance must be a single-channel uint16 PNG of ids, got shape {inst.shape}")
    if sem.shape != inst.shape:
        raise InputError(f"{ip}: instance map is {inst.shape[1]}x{inst.shape[0]} but {sp.name} is "
                         f"{sem.shape[1]}x{sem.shape[0]}; write both at the same size")
    h, w = sem.shape
    if abs(w / h - frame.width / frame.height) > 0.01 or w > frame.width or h > frame.height:
        raise InputError(f"{ip}: masks are {w}x{h} but frame {stem!r} is {frame.width}x{frame.height}; "
                         "write masks at the image size (or a same-aspect downscale)")
    if sem.max(initial=0) >= len(PANLIFT_CLASSES):
        raise InputError(f"{sp}: class id {int(sem.max())} outside the PanLift vocabulary (0..{len(PANLIFT_CLASSES) - 1})")
    if not (inst > 0).any():
        raise InputError(f"{ip}: empty mask (no pixel has an instance id > 0); the segmenter found nothing in "
                         f"frame {stem!r} — drop the frame or fix the masks")
    return sem.astype(np.uint8), inst.astype(np.uint16)


def _segments_from(src: Path, sems: list[np.ndarray], insts: list[np.ndarray]) -> dict[int, int]:
    """Class of each instance id: the source's segments.json when it has one, else the pixel majority
    (`majority_class`: void only for an id with no other class, ties to the lowest class id)."""
    seg_json = src / "segments.json"
    present = np.unique(np.concatenate([i.reshape(-1) for i in insts]))
    present = [int(i) for i in present if i > 0]
    if seg_json.is_file():
        try:
            data = json.loads(seg_json.read_text())
            table = {int(k): int(v["class_id"] if isinstance(v, dict) else v) for k, v in data.items()}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise InputError(f"{seg_json}: expected {{id: {{\"class_id\": int}}}} ({e})") from None
        missing = [i for i in present if i not in table]
        if missing:
            raise InputError(f"{seg_json}: instance ids {missing[:5]} appear in the masks but not in segments.json")
        return {i: table[i] for i in present}
    return majority_class(insts, sems)


def _run_segment_maps(ctx: StageContext, out: Path) -> dict:
    sc = ctx.cfg.segment
    src = _mask_source(ctx)
    validate_segment_inputs(ctx)
    test_present, test_missing = _mask_files(src, ctx.scene.test)
    test = ctx.scene.test if not test_missing else []
    stems = list(ctx.scene.train) + [s for s in test if s not in set(ctx.scene.train)]
    sems, insts = [], []
    with progress(ctx, len(stems), f"segment ({sc.kind})") as bar:
        for s in stems:
            sem, inst = _load_mask_pair(src, s, ctx.scene.frame(s))
            write_png(out / "semantics" / f"{s}.png", sem)
            write_png(out / "instance" / f"{s}.png", inst)
            sems.append(sem)
            insts.append(inst)
            bar.update(1)
    id_to_class = _segments_from(src, sems, insts)
    names = class_names()
    write_json(out / "segments.json", {str(i): {"class_id": c, "class_name": names.get(c, str(c)),
                                                 "thing": c in THING_IDS} for i, c in sorted(id_to_class.items())})
    note = ("SIMULATED segmenter: GT labels with synthetic noise, not a real model" if sc.kind == "simulated"
            else "precomputed masks")
    info = {"kind": sc.kind, "simulated": sc.kind == "simulated", "source": str(src), "note": note,
            "train": list(ctx.scene.train), "test": list(test), "num_instances": len(id_to_class)}
    if test_missing and test_present:
        info["test_note"] = f"{len(test_missing)} of {len(ctx.scene.test)} test frames lack maps; no segmenter_on_test score"
    write_json(out / "info.json", info)
    return info


_MERGE_ALIASES = {"standard": "standard_v2"}


def _panst3r_merge(merge: str) -> str:
    """segment.merge -> a panst3r.segment merge name ("standard" = the official default standard_v2)."""
    from panst3r.segment import MERGES

    m = _MERGE_ALIASES.get(merge, merge)
    if m not in MERGES:
        raise InputError(f"segment.merge {merge!r} is not a PanSt3R merge; use qubo, standard, {', '.join(MERGES[:2])}")
    return m


def panst3r_inputs(ctx: StageContext) -> dict[str, str]:
    """Content of the checkpoint (and of a vocabulary file): what a PanSt3R pass depends on besides images."""
    sc = ctx.cfg.segment
    out = {"checkpoint": ctx.hashes.file(sc.checkpoint)}
    if sc.vocabulary != "panlift" and Path(sc.vocabulary).is_file():
        out["vocabulary"] = ctx.hashes.file(Path(sc.vocabulary))
    return out


def load_panst3r(ctx: StageContext):
    """The shared `panst3r.segment.load_segmenter` with PanLift semantics ids: what one PanSt3R pass needs."""
    from panst3r.segment import load_segmenter

    return load_segmenter(ctx.cfg.segment, ctx.device, panlift_ids=True,
                          how="--segment.text-embeddings FILE (or a SigLIP folder), or --segment.vocabulary FILE.pt "
                              "(class names + [C, 768] embeddings written by panst3r.text.save_embeddings)")


def panst3r_pass(ctx: StageContext, net, images: list[Path], out_dir: Path) -> dict[str, dict]:
    """One multi-view PanSt3R pass over `images` into `out_dir` (labels at each image's size); segments.json."""
    net.segment(images, out_dir, progress=not ctx.quiet, write_pointmaps=False)
    return json.loads((out_dir / "segments.json").read_text())


def _run_segment_panst3r(ctx: StageContext, out: Path) -> dict:
    """Train views in one multi-view pass (what splat and uplift read); test views in a second pass of their own
    (the segmenter_on_test score), so no test image influences the 3D pipeline. include_test: one joint pass.
    The second pass's ids are offset past the first's, so ids never collide across passes."""
    sc = ctx.cfg.segment
    validate_segment_inputs(ctx)
    net = load_panst3r(ctx)
    train = list(ctx.scene.train)
    test = [s for s in ctx.scene.test if s not in set(train)]
    passes = {"all": train + test} if sc.include_test else {"train": train, **({"test": test} if test else {})}
    names = class_names()
    segments: dict[int, dict] = {}
    offset = 0
    for name, stems in passes.items():
        frames = [ctx.scene.frame(s) for s in stems]
        raw = out / "panst3r" / name
        segs = panst3r_pass(ctx, net, [f.image for f in frames], raw)
        for f in frames:
            inst = read_png(raw / "instance" / f"{Path(f.image).stem}.png").astype(np.int64)
            inst = resize_nearest(np.where(inst > 0, inst + offset, 0), (f.height, f.width))
            sem = id_classes(inst, {int(k) + offset: int(v["class_id"]) for k, v in segs.items()})
            write_png(out / "semantics" / f"{f.stem}.png", sem.astype(np.uint8))
            write_png(out / "instance" / f"{f.stem}.png", inst.astype(np.uint16))
        for k, v in segs.items():
            c = int(v["class_id"])
            segments[int(k) + offset] = {"class_id": c, "class_name": names.get(c, str(c)), "thing": c in THING_IDS,
                                         "score": v.get("score"), "pass": name}
        offset = max(segments, default=offset)
    if not any((read_png(out / "instance" / f"{s}.png") > 0).any() for s in train):
        raise InputError(f"{sc.checkpoint}: PanSt3R found no segment in any of the {len(train)} train views; check "
                         "the checkpoint and the class text embeddings (segment.vocabulary)")
    if offset > np.iinfo(np.uint16).max:
        raise InputError(f"{offset} PanSt3R segments do not fit uint16 instance maps; segment fewer views at once")
    write_json(out / "segments.json", {str(i): v for i, v in sorted(segments.items())})
    info = {"kind": "panst3r", "simulated": False, "checkpoint": str(sc.checkpoint),
            "variant": getattr(net.model, "variant", None), "network_size": net.size, "merge": _panst3r_merge(sc.merge),
            "vocabulary": sc.vocabulary, "passes": {k: len(v) for k, v in passes.items()},
            "train": train, "test": test, "num_instances": len(segments)}
    write_json(out / "info.json", info)
    return info


def segment_run(ctx: StageContext, out: Path) -> dict:
    """semantics/ + instance/ maps with one id per object across views, and segments.json (id -> class)."""
    if ctx.cfg.segment.kind == "panst3r":
        return _run_segment_panst3r(ctx, out)
    return _run_segment_maps(ctx, out)
