"""The pipeline's stages and the machinery that makes them cached, atomic and resumable.

Every stage writes into its own folder under the run directory through `atomic_dir`, so a folder that exists
is complete, and finishes by writing `manifest.json`: the sha256 of every input it read (scene files, upstream
outputs), the hash of the config sections it depends on, timings, peak RSS and the sha256 of each output. A
stage is skipped when its manifest matches what it would be computed from now; a change upstream changes the
downstream stages' input hashes, so exactly the affected stages run again. A killed run leaves only a hidden
temporary folder, removed on the next start, and the stage reruns from scratch (every stage is seeded and
deterministic), so the final outputs equal those of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from .classes import PANLIFT_CLASSES, THING_IDS
from .config import STAGE_SECTIONS, RunConfig, section_hash
from .io import InputError, atomic_dir, read_png, write_json, write_png
from .labels import resize_nearest
from .scene import Scene

__all__ = [
    "STAGE_ORDER",
    "StageContext",
    "StageResult",
    "Stage",
    "STAGES",
    "HashCache",
    "run_stage",
    "cleanup_stale",
    "read_manifest",
    "segmenter_can_segment_images",
    "resolve_device",
]

STAGE_ORDER = ("segment", "splat", "uplift", "render", "evaluate", "render_then_segment")
_VOLATILE = {"manifest.json", "history.json"}  # not hashed: timings vary run to run
_KILL_ENV = "PIPELINE_TEST_KILL_AT"


# ------------------------------------------------------------------------------------------------
# hashing
# ------------------------------------------------------------------------------------------------


class HashCache:
    """sha256 of files, memoised by (size, mtime_ns) in RUN_DIR/.cache/hashes.json (scenes can be large)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.table: dict[str, list] = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self.table = {}
        self.dirty = False

    def file(self, p: Path) -> str:
        p = Path(p)
        st = p.stat()
        key = str(p.resolve())
        hit = self.table.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
        self.table[key] = [st.st_size, st.st_mtime_ns, digest]
        self.dirty = True
        return digest

    def files(self, paths: list[Path], root: Path | None = None) -> str:
        """One digest over (name, content) pairs, names relative to `root` so moving a folder keeps it."""
        h = hashlib.sha256()
        for p in sorted(paths, key=str):
            name = str(Path(p).relative_to(root)) if root is not None else Path(p).name
            h.update(name.encode() + b"\0" + self.file(p).encode() + b"\n")
        return h.hexdigest()

    def save(self) -> None:
        if self.dirty:
            write_json(self.path, self.table)
            self.dirty = False


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _scene_geometry_digest(scene: Scene, hashes: HashCache) -> str:
    """Cameras, split and image content: what splatting and image segmentation read."""
    table = [
        [f.stem, f.width, f.height, np.round(f.K, 9).tolist(), np.round(f.c2w, 9).tolist(), hashes.file(f.image)]
        for f in scene.frames.values()
    ]
    return _digest({"frames": table, "train": scene.train, "test": scene.test})


def _scene_layout_digest(scene: Scene) -> str:
    """Stems, sizes and split only: what copying precomputed masks depends on."""
    return _digest({"frames": [[f.stem, f.width, f.height] for f in scene.frames.values()],
                    "train": scene.train, "test": scene.test})


def _scene_gt_digest(scene: Scene, hashes: HashCache) -> str:
    paths = [p for f in scene.frames.values() for p in (f.semantics, f.instance) if p is not None]
    return _digest({"gt": hashes.files(paths, scene.root) if paths else None, "test": scene.test})


# ------------------------------------------------------------------------------------------------
# context, manifests, the runner
# ------------------------------------------------------------------------------------------------


@dataclass
class StageContext:
    """What every stage can read: the resolved config, the scene, the run directory."""

    cfg: RunConfig
    scene: Scene
    run_dir: Path
    device: str
    hashes: HashCache
    console: object = None  # rich Console
    quiet: bool = False

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / name

    def manifest(self, name: str) -> dict | None:
        return read_manifest(self.stage_dir(name))


@dataclass
class StageResult:
    name: str
    status: str  # "ran" | "cached"
    manifest: dict
    wall_s: float = 0.0


@dataclass
class Stage:
    """One step: `inputs(ctx)` names what its result depends on; `run(ctx, out_dir)` writes it."""

    name: str
    inputs: Callable[[StageContext], dict[str, str]]
    run: Callable[[StageContext, Path], dict]
    sections: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)


def read_manifest(stage_dir: Path) -> dict | None:
    try:
        return json.loads((Path(stage_dir) / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError, NotADirectoryError):
        return None


def _outputs_of(folder: Path, hashes: HashCache | None = None) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name not in _VOLATILE:
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            out[str(p.relative_to(folder))] = h.hexdigest()
    return out


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (and finished children) so far, in MB."""
    scale = 1.0 / 1024.0 if sys.platform != "darwin" else 1.0 / (1024.0 * 1024.0)  # ru_maxrss: KiB on Linux
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) * scale, 1)


def _maybe_kill(name: str, where: str) -> None:
    """Test hook: PIPELINE_TEST_KILL_AT=<stage> dies abruptly (like SIGKILL) halfway through that stage."""
    if os.environ.get(_KILL_ENV) == name and where == "middle":
        sys.stdout.flush()
        os._exit(137)


def cleanup_stale(run_dir: Path) -> list[Path]:
    """Remove temporary stage folders left by a killed run (call with the run lock held)."""
    removed = []
    if not run_dir.is_dir():
        return removed
    for p in run_dir.iterdir():
        if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def run_stage(stage: Stage, ctx: StageContext, force: bool = False) -> StageResult:
    """Skip the stage if its manifest matches, else run it into a temporary folder and rename it into place."""
    inputs = stage.inputs(ctx)
    cfg_hash = section_hash(ctx.cfg, stage.sections or STAGE_SECTIONS[stage.name], stage.extra)
    dest = ctx.stage_dir(stage.name)
    old = read_manifest(dest)
    if (not force and old is not None and old.get("inputs") == inputs and old.get("config_hash") == cfg_hash
            and all((dest / rel).is_file() for rel in old.get("outputs", []))):
        return StageResult(stage.name, "cached", old, 0.0)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    with atomic_dir(dest) as tmp:
        info = stage.run(ctx, tmp) or {}
        _maybe_kill(stage.name, "middle")
        wall = time.perf_counter() - t0
        outputs = _outputs_of(tmp)
        manifest = {
            "stage": stage.name,
            "inputs": inputs,
            "config_hash": cfg_hash,
            "started": started,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_s": round(wall, 3),
            "peak_rss_mb": _peak_rss_mb(),
            "outputs": sorted(outputs) + ["manifest.json"],
            "outputs_sha256": outputs,
            "info": info,
        }
        write_json(tmp / "manifest.json", manifest)
    ctx.hashes.save()
    return StageResult(stage.name, "ran", manifest, wall)


def _upstream(ctx: StageContext, name: str, files: tuple[str, ...] | None = None) -> str:
    """Digest of an upstream stage's outputs (all of them, or the named ones) from its manifest."""
    m = ctx.manifest(name)
    if m is None:
        raise RuntimeError(f"stage {name!r} has not run")  # the runner orders stages; this is a bug if it fires
    outs = m.get("outputs_sha256", {})
    if files is not None:
        outs = {k: v for k, v in outs.items() if k in files or any(k.startswith(f + "/") for f in files)}
    return _digest(outs)


# ------------------------------------------------------------------------------------------------
# helpers shared by stages
# ------------------------------------------------------------------------------------------------


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda requested but torch sees no CUDA device; use --device cpu or auto")
    return device


def segmenter_can_segment_images(kind: str) -> bool:
    return kind == "panst3r"


def _progress(ctx: StageContext, total: int, desc: str):
    from tqdm import tqdm

    # bars only on a terminal: logs (the table harness, CI) stay free of carriage-return noise
    return tqdm(total=total, desc=desc, unit="view", leave=False, file=sys.stderr,
                disable=ctx.quiet or total < 2 or not sys.stderr.isatty())


def _sort_stems(stems) -> list[str]:
    def key(s):
        try:
            return (0, int(s), s)
        except ValueError:
            return (1, 0, s)

    return sorted(stems, key=key)


def _class_names() -> dict[int, str]:
    return {i: n for i, n in enumerate(PANLIFT_CLASSES)}


def read_segments(seg_dir: Path) -> dict[int, int]:
    """segment/segments.json -> {instance id: class id}."""
    data = json.loads((seg_dir / "segments.json").read_text())
    return {int(k): int(v["class_id"]) for k, v in data.items()}


def panlift_prediction(inst: np.ndarray, id_to_class: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Consistent segment ids -> PanLift prediction maps (class per pixel; thing ids, 0 on stuff and void)."""
    ids = np.asarray(inst, dtype=np.int64)
    uniq, inv = np.unique(ids, return_inverse=True)
    cls = np.array([id_to_class.get(int(u), 0) if u > 0 else 0 for u in uniq], dtype=np.int64)[inv].reshape(ids.shape)
    thing = np.isin(cls, list(THING_IDS))
    sur = np.where(thing, ids, 0)
    if sur.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError("instance ids exceed uint16")
    return cls.astype(np.uint8), sur.astype(np.uint16)


# ------------------------------------------------------------------------------------------------
# segment
# ------------------------------------------------------------------------------------------------


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
        raise InputError(f"unknown segment kind {sc.kind!r}; use simulated, precomputed or panst3r")


def _segment_inputs(ctx: StageContext) -> dict[str, str]:
    sc = ctx.cfg.segment
    if sc.kind == "panst3r":
        return {"scene": _scene_geometry_digest(ctx.scene, ctx.hashes), **_panst3r_inputs(ctx)}
    src = _mask_source(ctx)
    stems = ctx.scene.train + ctx.scene.test
    files = [src / d / f"{s}.png" for s in stems for d in ("semantics", "instance")]
    files = [p for p in files if p.is_file()]
    if (src / "segments.json").is_file():
        files.append(src / "segments.json")
    return {"scene": _scene_layout_digest(ctx.scene), "masks": ctx.hashes.files(files, src)}


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
    """Class of each instance id: the source's segments.json when it has one, else the pixel majority."""
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
    votes: dict[tuple[int, int], int] = {}
    for sem, inst in zip(sems, insts):
        m = inst > 0
        pairs, counts = np.unique(np.stack([inst[m].astype(np.int64), sem[m].astype(np.int64)]), axis=1, return_counts=True)
        for (i, c), n in zip(pairs.T.tolist(), counts.tolist()):
            votes[(i, c)] = votes.get((i, c), 0) + n
    best: dict[int, tuple[int, int]] = {}
    for (i, c), n in sorted(votes.items()):
        if n > best.get(i, (-1, 0))[0]:
            best[i] = (n, c)
    return {i: best[i][1] for i in present}


def _run_segment_maps(ctx: StageContext, out: Path) -> dict:
    sc = ctx.cfg.segment
    src = _mask_source(ctx)
    validate_segment_inputs(ctx)
    test_present, test_missing = _mask_files(src, ctx.scene.test)
    test = ctx.scene.test if not test_missing else []
    stems = list(ctx.scene.train) + [s for s in test if s not in set(ctx.scene.train)]
    sems, insts = [], []
    with _progress(ctx, len(stems), f"segment ({sc.kind})") as bar:
        for s in stems:
            sem, inst = _load_mask_pair(src, s, ctx.scene.frame(s))
            write_png(out / "semantics" / f"{s}.png", sem)
            write_png(out / "instance" / f"{s}.png", inst)
            sems.append(sem)
            insts.append(inst)
            bar.update(1)
    id_to_class = _segments_from(src, sems, insts)
    names = _class_names()
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


def _panst3r_inputs(ctx: StageContext) -> dict[str, str]:
    sc = ctx.cfg.segment
    out = {"checkpoint": ctx.hashes.file(sc.checkpoint)}
    if sc.vocabulary != "panlift" and Path(sc.vocabulary).is_file():
        out["vocabulary"] = ctx.hashes.file(Path(sc.vocabulary))
    return out


@dataclass
class _PanSt3R:
    model: object
    vocab: object  # panst3r.cli.Vocabulary, semantics ids = PanLift ids
    size: int  # network long side (the checkpoint's training size)


def _load_panst3r(ctx: StageContext) -> _PanSt3R:
    """Model, PanLift-id vocabulary with text embeddings, network size: what one PanSt3R pass needs."""
    import panst3r
    from panst3r.cli import class_vocabulary
    from panst3r.segment import checkpoint_image_size

    sc = ctx.cfg.segment
    vocab = class_vocabulary(sc.vocabulary, sc.text_embeddings or sc.siglip, ctx.device, panlift_ids=True,
                             how="--segment.text-embeddings FILE, --segment.siglip DIR, or --segment.vocabulary "
                                 "FILE.pt (class names + [C, 768] embeddings written by panst3r.text.save_embeddings)")
    model = panst3r.load(sc.checkpoint, device=ctx.device)
    if vocab.embeddings.shape[1] != model.config.text_dim:
        raise InputError(f"{sc.vocabulary}: text embeddings are {vocab.embeddings.shape[1]} wide but {sc.checkpoint} "
                         f"expects {model.config.text_dim}; encode the classes with the model's text encoder")
    return _PanSt3R(model, vocab, checkpoint_image_size(sc.checkpoint))


def _panst3r_pass(ctx: StageContext, net: _PanSt3R, images: list[Path], out_dir: Path) -> dict[str, dict]:
    """One multi-view PanSt3R pass over `images` into `out_dir` (labels at each image's size); segments.json."""
    from panst3r.segment import segment_images

    sc = ctx.cfg.segment
    segment_images(images, net.model, net.vocab.embeddings.to(ctx.device), net.vocab.names, out_dir,
                   num_keyframes=sc.keyframes or None, merge=_panst3r_merge(sc.merge), seed=0, size=net.size,
                   progress=not ctx.quiet and sys.stderr.isatty(), class_ids=net.vocab.class_ids,
                   write_pointmaps=False)
    return json.loads((out_dir / "segments.json").read_text())


def _run_segment_panst3r(ctx: StageContext, out: Path) -> dict:
    """Train views in one multi-view pass (what splat and uplift read); test views in a second pass of their own
    (the segmenter_on_test score), so no test image influences the 3D pipeline. include_test: one joint pass.
    The second pass's ids are offset past the first's, so ids never collide across passes."""
    sc = ctx.cfg.segment
    validate_segment_inputs(ctx)
    net = _load_panst3r(ctx)
    train = list(ctx.scene.train)
    test = [s for s in ctx.scene.test if s not in set(train)]
    passes = {"all": train + test} if sc.include_test else {"train": train, **({"test": test} if test else {})}
    names = _class_names()
    segments: dict[int, dict] = {}
    offset = 0
    for name, stems in passes.items():
        frames = [ctx.scene.frame(s) for s in stems]
        raw = out / "panst3r" / name
        segs = _panst3r_pass(ctx, net, [f.image for f in frames], raw)
        for f in frames:
            inst = read_png(raw / "instance" / f"{Path(f.image).stem}.png").astype(np.int64)
            inst = resize_nearest(np.where(inst > 0, inst + offset, 0), (f.height, f.width))
            sem, _ = panlift_prediction(inst, {int(k) + offset: int(v["class_id"]) for k, v in segs.items()})
            write_png(out / "semantics" / f"{f.stem}.png", sem)
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


def _segment_run(ctx: StageContext, out: Path) -> dict:
    if ctx.cfg.segment.kind == "panst3r":
        return _run_segment_panst3r(ctx, out)
    return _run_segment_maps(ctx, out)


# ------------------------------------------------------------------------------------------------
# splat
# ------------------------------------------------------------------------------------------------


def _splat_inputs(ctx: StageContext) -> dict[str, str]:
    return {"scene": _scene_geometry_digest(ctx.scene, ctx.hashes),
            "segment": _upstream(ctx, "segment", ("instance", "segments.json"))}


def _train_instance_maps(ctx: StageContext) -> dict[str, np.ndarray]:
    seg = ctx.stage_dir("segment")
    return {s: read_png(seg / "instance" / f"{s}.png").astype(np.int64) for s in ctx.scene.train}


def _splat_run(ctx: StageContext, out: Path) -> dict:
    from splat.train import train

    cfg = dataclasses.replace(ctx.cfg.splat.train)
    if hasattr(cfg, "device"):
        cfg = dataclasses.replace(cfg, device=ctx.device)
    result = train(ctx.scene, cfg, instance_maps=_train_instance_maps(ctx), out_dir=out, resume=None,
                   **({"kill_hook": lambda: _maybe_kill("splat", "middle")} if _accepts(train, "kill_hook") else {}))
    _maybe_kill("splat", "middle")
    return _splat_info(result, out)


def _accepts(fn, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _splat_info(result, out: Path) -> dict:
    info: dict = {}
    for key in ("num_gaussians", "psnr", "test_psnr", "steps"):
        v = getattr(result, key, None) if not isinstance(result, dict) else result.get(key)
        if v is not None:
            info[key] = float(v) if isinstance(v, float) else v
    if "test_psnr" in info and "psnr" not in info:
        info["psnr"] = info.pop("test_psnr")
    return info


# ------------------------------------------------------------------------------------------------
# uplift, render
# ------------------------------------------------------------------------------------------------


def _uplift_inputs(ctx: StageContext) -> dict[str, str]:
    return {"splat": _upstream(ctx, "splat", ("gaussians.ply",)),
            "segment": _upstream(ctx, "segment", ("instance", "segments.json")),
            "scene": _scene_geometry_digest(ctx.scene, ctx.hashes)}


def _scene_cameras(ctx: StageContext, stems: list[str], scale: float = 1.0):
    """splat.render.Cameras for the given frames (all frames of a scene share one image size)."""
    from splat.render import Cameras

    frames = [ctx.scene.frame(s) for s in stems]
    cams = Cameras.from_frames(frames, scale=scale)
    return cams if ctx.device == "cpu" else cams.to(ctx.device)


def _load_gaussians(ctx: StageContext):
    from splat.ply import load_ply

    g, _extra = load_ply(ctx.stage_dir("splat") / "gaussians.ply")
    return {k: v.to(ctx.device) for k, v in g.items()} if ctx.device != "cpu" else g


def _uplift_run(ctx: StageContext, out: Path) -> dict:
    from uplift.export import export_labelled
    from uplift.ludvig import instance_classes, uplift

    uc = ctx.cfg.uplift
    seg = ctx.stage_dir("segment")
    stems = list(ctx.scene.train)
    cams = _scene_cameras(ctx, stems, uc.scale)
    H, W = int(cams.height), int(cams.width)
    maps, classes = [], []
    for s in stems:
        inst = read_png(seg / "instance" / f"{s}.png").astype(np.int64)
        sem = read_png(seg / "semantics" / f"{s}.png").astype(np.int64)
        maps.append(resize_nearest(inst, (H, W)))
        classes.append(resize_nearest(sem, (H, W)))
    gaussians = _load_gaussians(ctx)
    result = uplift(gaussians, cams, maps, ignore_label=uc.ignore_label, chunk_channels=uc.chunk, topk=uc.top_k,
                    progress=not ctx.quiet and sys.stderr.isatty())
    _maybe_kill("uplift", "middle")
    result.save(out / "uplift.npz")
    segments = json.loads((seg / "segments.json").read_text())
    id_to_class = instance_classes(maps, classes, segments=segments, ignore_label=uc.ignore_label)
    # labelled.ply + legend.json (id -> class, colour, count, 3D box); the render stage reads the legend
    export_labelled(out / "labelled.ply", gaussians, result, id_to_class, PANLIFT_CLASSES)
    return {"num_gaussians": result.num_gaussians, "num_labels": result.num_labels,
            "labelled_fraction": float(result.labelled.mean()) if result.num_gaussians else 0.0,
            "num_views": result.num_views}


def legend_classes(uplift_dir: Path) -> dict[int, int]:
    """uplift/legend.json -> {instance id: class id}."""
    legend = json.loads((Path(uplift_dir) / "legend.json").read_text())
    return {int(k): int(v["class_id"]) for k, v in legend["instances"].items()}


def _render_inputs(ctx: StageContext) -> dict[str, str]:
    return {"splat": _upstream(ctx, "splat", ("gaussians.ply",)),
            "uplift": _upstream(ctx, "uplift", ("uplift.npz", "legend.json")),
            "scene": _scene_geometry_digest(ctx.scene, ctx.hashes)}


def _render_stems(ctx: StageContext) -> list[str]:
    poses = ctx.cfg.render.poses
    if poses == "test":
        return list(ctx.scene.test)
    if poses == "train":
        return list(ctx.scene.train)
    return list(ctx.scene.frames)


def _render_run(ctx: StageContext, out: Path) -> dict:
    from uplift.ludvig import UpliftResult
    from uplift.render import render_panoptic, write_predictions

    uc = ctx.cfg.uplift
    stems = _render_stems(ctx)
    if not stems:
        (out / "skipped.txt").write_text(f"no {ctx.cfg.render.poses} frames to render\n")
        return {"skipped": f"no {ctx.cfg.render.poses} frames", "num_views": 0}
    gaussians = _load_gaussians(ctx)
    result = UpliftResult.load(ctx.stage_dir("uplift") / "uplift.npz")
    id_to_class = legend_classes(ctx.stage_dir("uplift"))
    info: dict = {"num_views": len(stems)}
    psnrs = []
    with _progress(ctx, len(stems), "render") as bar:
        for s in stems:  # one view at a time: memory stays flat for long test splits
            cam = _scene_cameras(ctx, [s], ctx.cfg.render.scale)
            inst, sem, _conf = render_panoptic(gaussians, result, cam, id_to_class, fallback=uc.fallback,
                                               min_weight=uc.min_weight, chunk_channels=uc.chunk)
            rgb = _render_rgb(gaussians, cam)  # [1, H, W, 3] float in [0, 1]
            write_predictions(out, [s], inst, sem, rgb=rgb)
            gt = ctx.scene.load_rgb(s)
            if gt.shape[:2] == rgb.shape[1:3]:
                mse = float(np.mean((np.clip(rgb[0], 0, 1) - gt) ** 2))
                psnrs.append(10 * np.log10(1.0 / max(mse, 1e-12)))
            bar.update(1)
            if s == stems[len(stems) // 2]:
                _maybe_kill("render", "middle")
    if psnrs:
        info["psnr"] = float(np.mean(psnrs))
    return info


def _render_rgb(gaussians, cam) -> np.ndarray:
    import torch

    from splat.render import render

    with torch.no_grad():
        img = render(gaussians, cam, None, render_depth=False).features  # [1, H, W, 3] RGB from SH
    return img.detach().float().clamp(0, 1).cpu().numpy()


# ------------------------------------------------------------------------------------------------
# evaluate
# ------------------------------------------------------------------------------------------------


def scene_has_test_gt(scene: Scene) -> bool:
    return bool(scene.test) and all(scene.frames[s].semantics is not None and scene.frames[s].instance is not None
                                    for s in scene.test)


def _evaluate_inputs(ctx: StageContext) -> dict[str, str]:
    return {"render": _upstream(ctx, "render", ("pred_semantics", "pred_surrogateid")),
            "segment": _upstream(ctx, "segment"),
            "scene_gt": _scene_gt_digest(ctx.scene, ctx.hashes)}


def _evaluate_run(ctx: StageContext, out: Path) -> dict:
    from .metrics import evaluate_scene, json_safe

    if not ctx.cfg.evaluate.enabled:
        (out / "skipped.txt").write_text("evaluation off (evaluate.enabled = false)\n")
        return {"skipped": "evaluation off (evaluate.enabled = false)"}
    if not scene_has_test_gt(ctx.scene) or ctx.scene.format != "panlift":
        why = "the scene has no GT labels for its test frames (needs rs_semantics/ + rs_instance/ in the PanLift layout)"
        (out / "skipped.txt").write_text(why + "\n")
        return {"skipped": why}
    info: dict = {}
    uplift = json_safe(evaluate_scene(ctx.scene.root, ctx.stage_dir("render")))
    write_json(out / "uplift.json", uplift)
    info["uplift"] = _headline(uplift)
    seg = ctx.stage_dir("segment")
    seg_info = json.loads((seg / "info.json").read_text())
    if seg_info.get("test") and set(ctx.scene.test) <= set(seg_info["test"]):
        # the segmenter's own per-pixel classes, its ids on thing pixels: what it predicts without any 3D
        pred = out / "segmenter_on_test"
        for s in ctx.scene.test:
            sem = read_png(seg / "semantics" / f"{s}.png").astype(np.uint8)
            inst = read_png(seg / "instance" / f"{s}.png").astype(np.uint16)
            write_png(pred / "pred_semantics" / f"{s}.png", sem)
            write_png(pred / "pred_surrogateid" / f"{s}.png", np.where(np.isin(sem, list(THING_IDS)), inst, 0).astype(np.uint16))
        direct = json_safe(evaluate_scene(ctx.scene.root, pred))
        direct["segmenter_kind"] = seg_info.get("kind")
        write_json(out / "segmenter_on_test.json", direct)
        info["segmenter_on_test"] = _headline(direct)
    return info


def _headline(m: dict) -> dict:
    return {k: m.get(k) for k in ("pq", "sq", "rq", "pq_th", "pq_st", "miou")}


# ------------------------------------------------------------------------------------------------
# render-then-segment
# ------------------------------------------------------------------------------------------------


def rts_skip_reason(cfg: RunConfig) -> str | None:
    """Why render-then-segment does not run for this config, or None when it does."""
    if cfg.render_then_segment == "off":
        return "render_then_segment is off"
    if not segmenter_can_segment_images(cfg.segment.kind):
        return (f"the {cfg.segment.kind} segmenter cannot segment rendered images "
                "(render-then-segment needs segment.kind panst3r)")
    return None


def _rts_inputs(ctx: StageContext) -> dict[str, str]:
    if rts_skip_reason(ctx.cfg) is not None:
        return {}
    return {"render": _upstream(ctx, "render", ("rgb",)), "scene_gt": _scene_gt_digest(ctx.scene, ctx.hashes),
            **_panst3r_inputs(ctx)}


def _rts_run(ctx: StageContext, out: Path) -> dict:
    """PanSt3R on the RGB renders of the test views, all in one multi-view pass, scored like the uplift."""
    why = rts_skip_reason(ctx.cfg)
    rgb = ctx.stage_dir("render") / "rgb"
    stems = [s for s in ctx.scene.test if (rgb / f"{s}.png").is_file()]
    if why is None and not stems:
        why = f"no rendered test views in {rgb} (render.poses is {ctx.cfg.render.poses}; use test or all)"
    if why is not None:
        (out / "skipped.txt").write_text(why + "\n")
        return {"skipped": why}
    from .metrics import evaluate_scene, json_safe

    net = _load_panst3r(ctx)
    segs = _panst3r_pass(ctx, net, [rgb / f"{s}.png" for s in stems], out / "panst3r")
    id_to_class = {int(k): int(v["class_id"]) for k, v in segs.items()}
    for s in stems:
        sem, sur = panlift_prediction(read_png(out / "panst3r" / "instance" / f"{s}.png"), id_to_class)
        write_png(out / "pred_semantics" / f"{s}.png", sem)
        write_png(out / "pred_surrogateid" / f"{s}.png", sur)
    info: dict = {"num_views": len(stems), "num_segments": len(segs), "network_size": net.size}
    if ctx.cfg.evaluate.enabled and scene_has_test_gt(ctx.scene) and ctx.scene.format == "panlift":
        m = json_safe(evaluate_scene(ctx.scene.root, out))
        write_json(out / "eval.json", m)
        info.update(_headline(m))
    return info


# ------------------------------------------------------------------------------------------------

STAGES: dict[str, Stage] = {
    "segment": Stage("segment", _segment_inputs, _segment_run),
    "splat": Stage("splat", _splat_inputs, _splat_run),
    "uplift": Stage("uplift", _uplift_inputs, _uplift_run),
    "render": Stage("render", _render_inputs, _render_run),
    "evaluate": Stage("evaluate", _evaluate_inputs, _evaluate_run),
    "render_then_segment": Stage("render_then_segment", _rts_inputs, _rts_run),
}
