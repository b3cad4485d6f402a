"""segment: consistent (class, instance) maps for the train (and test) views, from masks on disk or PanSt3R."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..cache import StageContext, scene_geometry_digest, scene_layout_digest
from ..common.classes import THING_IDS
from ..common.io import InputError, read_json_if_present, read_png, write_json, write_png
from ..common.labels import STUFF_ID_OFFSET, id_classes, majority_class, resize_nearest
from ..masks import MaskStats, convention_note, per_frame_dirs, read_mask_pair, segment_ids
from ..capture import labels_to_frame
from .shared import class_names, progress

MASK_KINDS = ("simulated", "precomputed", "per_frame")

__all__ = ["MASK_KINDS", "segment_inputs", "segment_run", "validate_segment_inputs", "load_panst3r", "panst3r_pass",
           "panst3r_inputs"]


def _mask_source(ctx: StageContext) -> Path:
    sc = ctx.cfg.segment
    if sc.kind == "simulated":
        src = sc.path or (ctx.scene.root / "panoptic_consistent")
        if not Path(src).is_dir():
            raise InputError(f"{src}: no simulated segmenter maps; the simulated segmenter reads a synthetic scene's "
                             "panoptic_consistent/ (generate one with `python -m pipeline synth DIR`) or pass --segment.path")
        return Path(src)
    if sc.kind == "per_frame" and sc.path is None:
        return ctx.scene.root  # a PanLift scene's own m2f_semantics/ + m2f_instance/
    if sc.path is None:
        raise InputError("segment.kind precomputed needs --segment.path DIR holding semantics/<stem>.png and instance/<stem>.png")
    if not Path(sc.path).is_dir():
        raise InputError(f"{sc.path}: {sc.kind} segmentation folder does not exist; pass --segment.path DIR "
                         "holding semantics/<stem>.png (class ids) and instance/<stem>.png (uint16 ids)")
    return Path(sc.path)


def _check_mask_sizes(dirs: tuple[Path, Path, Path], scene) -> None:
    """Mask sizes from the PNG headers only (cheap), so masks of the wrong size are refused before any work."""
    from PIL import Image

    for stem in scene.train:
        frame = scene.frame(stem)
        for d in (dirs[2], dirs[1]):  # instance first: its message names the map users get wrong most
            p = d / f"{stem}.png"
            try:
                with Image.open(p) as im:
                    w, h = im.size
            except Exception as e:  # PIL raises many types on corrupt files
                raise InputError(f"{p}: cannot read image ({e}); re-export it as a PNG") from None
            if abs(w / h - frame.width / frame.height) > 0.01 or w > frame.width or h > frame.height:
                raise InputError(f"{p}: masks are {w}x{h} but frame {stem!r} is {frame.width}x{frame.height}; "
                                 "write masks at the image size (or a same-aspect downscale)")


def _mask_dirs(ctx: StageContext) -> tuple[Path, Path, Path]:
    """(source folder, semantics dir, instance dir) of the masks the segment kind reads."""
    src = _mask_source(ctx)
    if ctx.cfg.segment.kind == "per_frame":
        return (src, *per_frame_dirs(src))
    return src, src / "semantics", src / "instance"


def _mask_files(dirs: tuple[Path, Path, Path], stems: list[str]) -> tuple[list[str], list[str]]:
    _, sd, idir = dirs
    present = [s for s in stems if (sd / f"{s}.png").is_file() and (idir / f"{s}.png").is_file()]
    missing = [s for s in stems if s not in set(present)]
    return present, missing


def validate_segment_inputs(ctx: StageContext) -> None:
    """Fail before any stage runs when the masks' source cannot work (a clear line, no half-written folder)."""
    sc = ctx.cfg.segment
    if sc.kind in MASK_KINDS:
        dirs = _mask_dirs(ctx)
        _, missing = _mask_files(dirs, ctx.scene.train)
        if missing:
            s = missing[0]
            d = dirs[1] if not (dirs[1] / f"{s}.png").is_file() else dirs[2]
            raise InputError(f"{d / (s + '.png')}: missing {d.name} map for train frame {s!r} "
                             f"({len(missing)} of {len(ctx.scene.train)} train frames lack maps); "
                             "write semantics/<stem>.png and instance/<stem>.png for every train frame")
        _check_mask_sizes(dirs, ctx.scene)
    elif sc.kind == "panst3r":
        if sc.checkpoint is None:
            raise InputError("segment.kind panst3r needs --segment.checkpoint PATH to a PanSt3R checkpoint")
        from panst3r.checkpoint import check_checkpoint_file

        check_checkpoint_file(sc.checkpoint)
        _panst3r_merge(sc.merge)
        if sc.vocabulary != "panlift" and not Path(sc.vocabulary).is_file():
            raise InputError(f"{sc.vocabulary}: vocabulary file not found; pass --segment.vocabulary panlift, a text "
                             "file (one class name a line) or a .pt of names + embeddings (panst3r.text.save_embeddings)")
        from panst3r.cli import class_vocabulary  # class embeddings resolved now (then cached), not after work began

        class_vocabulary(sc.vocabulary, sc.text_embeddings, "cpu", panlift_ids=True, how=_EMBEDDINGS_HOW)
    elif sc.kind != "none":  # tyro/YAML already restrict it; kept for programmatic configs
        raise ValueError(f"unknown segment kind {sc.kind!r}; use simulated, precomputed, per_frame, panst3r or none")


def segment_inputs(ctx: StageContext) -> dict[str, str]:
    """Masks on disk: their content and the frame layout; PanSt3R: the images, checkpoint and vocabulary."""
    sc = ctx.cfg.segment
    if sc.kind == "panst3r":
        return {"scene": scene_geometry_digest(ctx.scene, ctx.hashes), **panst3r_inputs(ctx)}
    if sc.kind == "none":
        return {"scene": scene_layout_digest(ctx.scene)}
    src, sd, idir = _mask_dirs(ctx)
    stems = ctx.scene.train + ctx.scene.test
    files = [d / f"{s}.png" for s in stems for d in (sd, idir)]
    files = [p for p in files if p.is_file()]
    if sc.kind != "per_frame" and (src / "segments.json").is_file():
        files.append(src / "segments.json")
    return {"scene": scene_layout_digest(ctx.scene), "masks": ctx.hashes.files(files, src)}


def _segments_from(src: Path, sems: list[np.ndarray], insts: list[np.ndarray], use_json: bool = True) -> dict[int, int]:
    """Class of each segment id: stuff-class segments (STUFF_ID_OFFSET + class) by construction; the others from
    the source's segments.json when it has one, else the pixel majority (`majority_class`: void only for an id
    with no other class, ties to the lowest class id)."""
    seg_json = src / "segments.json"
    present = np.unique(np.concatenate([i.reshape(-1) for i in insts]))
    fixed = {int(i): int(i) - STUFF_ID_OFFSET for i in present if i >= STUFF_ID_OFFSET}
    present = [int(i) for i in present if 0 < i < STUFF_ID_OFFSET]
    if use_json and seg_json.is_file():
        try:
            data = json.loads(seg_json.read_text())
            table = {int(k): int(v["class_id"] if isinstance(v, dict) else v) for k, v in data.items()}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise InputError(f"{seg_json}: expected {{id: {{\"class_id\": int}}}} ({e})") from None
        missing = [i for i in present if i not in table]
        if missing:
            raise InputError(f"{seg_json}: instance ids {missing[:5]} appear in the masks but not in segments.json")
        return {**{i: table[i] for i in present}, **fixed}
    own = [np.where(i < STUFF_ID_OFFSET, i, 0) for i in insts]
    return {**{i: c for i, c in majority_class(own, sems).items() if i in set(present)}, **fixed}


def _run_segment_maps(ctx: StageContext, out: Path) -> dict:
    """simulated / precomputed / per_frame: validate every frame, convert to segment ids (pipeline.masks), write.

    Everything is read and checked before the first file is written, so a bad frame leaves nothing behind (the
    stage folder is atomic too). per_frame keeps each view's own thing ids (the uplift stage associates them)."""
    sc = ctx.cfg.segment
    validate_segment_inputs(ctx)
    dirs = _mask_dirs(ctx)
    src, sd, idir = dirs
    test_present, test_missing = _mask_files(dirs, ctx.scene.test)
    test = ctx.scene.test if not test_missing else []
    stems = list(ctx.scene.train) + [s for s in test if s not in set(ctx.scene.train)]
    per_frame = sc.kind == "per_frame"
    stats = MaskStats()
    sems, ids = [], []
    with progress(ctx, len(stems), f"segment ({sc.kind})") as bar:
        for s in stems:
            f = ctx.scene.frame(s)
            cap = f.original or f  # masks are drawn on the image as captured (before undistortion/downscaling)
            sem, inst = read_mask_pair(sd / f"{s}.png", idir / f"{s}.png", cap.width, cap.height, s)
            sem, inst = labels_to_frame(sem, f), labels_to_frame(inst, f)
            seg = segment_ids(sem, inst, idir / f"{s}.png", stuff_by_class=per_frame)
            if s in set(ctx.scene.train):
                stats.add(sem, inst, seg, s)
            sems.append(sem)
            ids.append(seg.astype(np.uint16))
            bar.update(1)
    for s, sem, seg in zip(stems, sems, ids):
        write_png(out / "semantics" / f"{s}.png", sem)
        write_png(out / "instance" / f"{s}.png", seg)
    id_to_class = _segments_from(src, sems, ids, use_json=not per_frame)
    names = class_names()
    write_json(out / "segments.json", {str(i): {"class_id": c, "class_name": names.get(c, str(c)),
                                                 "thing": c in THING_IDS} for i, c in sorted(id_to_class.items())})
    if sc.kind == "simulated":
        note = "SIMULATED segmenter: GT labels with synthetic noise, not a real model"
    elif per_frame:
        note = "per-frame masks (ids not consistent across views; associated in 3D by the uplift stage)"
    else:
        note = "precomputed masks"
    sim = sc.kind == "simulated" or _simulated_source(src)
    if sim and sc.kind != "simulated":
        note += " — SIMULATED per-frame segmenter output of a synthetic scene"
    note += "; " + convention_note(stats)
    info = {"kind": sc.kind, "simulated": sim, "source": str(src), "masks": [str(sd), str(idir)], "note": note,
            "masks_read": stats.as_dict(), "train": list(ctx.scene.train), "test": list(test),
            "num_instances": len(id_to_class)}
    if per_frame:
        info["num_instances_note"] = "per-frame segment ids; the scene-wide count is known after association"
    if test_missing and test_present:
        info["test_note"] = f"{len(test_missing)} of {len(ctx.scene.test)} test frames lack maps; no segmenter_on_test score"
    write_json(out / "info.json", info)
    return info


def _simulated_source(src: Path) -> bool:
    """A synthetic scene's own folders hold SIMULATED segmenter output (pipeline.synth)."""
    from ..synth import GENERATOR

    for p in (src / "scene_meta.json", src.parent / "scene_meta.json"):
        meta = read_json_if_present(p)
        if isinstance(meta, dict) and meta.get("generator") == GENERATOR:
            return True
    return False


def _panst3r_merge(merge: str) -> str:
    """segment.merge checked against panst3r.segment's merges (a programmatic config can hold anything)."""
    from panst3r.segment import MERGES

    if merge not in MERGES:
        raise InputError(f"segment.merge {merge!r} is not a PanSt3R merge; use one of {', '.join(MERGES)}")
    return merge


def panst3r_inputs(ctx: StageContext) -> dict[str, str]:
    """Content of the checkpoint (and of a vocabulary file): what a PanSt3R pass depends on besides images."""
    sc = ctx.cfg.segment
    out = {"checkpoint": ctx.hashes.file(sc.checkpoint)}
    if sc.vocabulary != "panlift" and Path(sc.vocabulary).is_file():
        out["vocabulary"] = ctx.hashes.file(Path(sc.vocabulary))
    return out


_EMBEDDINGS_HOW = ("--segment.text-embeddings FILE (or a SigLIP folder), or --segment.vocabulary FILE.pt "
                   "(class names + [C, 768] embeddings written by panst3r.text.save_embeddings)")


def load_panst3r(ctx: StageContext):
    """The shared `panst3r.segment.load_segmenter` with PanLift semantics ids: what one PanSt3R pass needs."""
    from panst3r.segment import load_segmenter

    return load_segmenter(ctx.cfg.segment, ctx.device, panlift_ids=True, how=_EMBEDDINGS_HOW)


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
    if ctx.cfg.segment.kind == "none":
        info = {"kind": "none", "simulated": False, "note": "geometry only: no segmenter, no label stages",
                "train": list(ctx.scene.train), "test": [], "num_instances": 0}
        write_json(out / "info.json", info)
        return info
    if ctx.cfg.segment.kind == "panst3r":
        return _run_segment_panst3r(ctx, out)
    return _run_segment_maps(ctx, out)
