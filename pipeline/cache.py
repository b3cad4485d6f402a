"""The cache engine: what makes the pipeline's stages cached, atomic and resumable.

Every stage writes into its own folder under the run directory through `atomic_dir`, so a folder that exists
is complete, and finishes by writing `manifest.json`: the sha256 of every input it read (scene files, upstream
outputs), the hash of the config fields it depends on, timings, peak RSS and the sha256 of each output. A
stage is skipped when its manifest matches what it would be computed from now (`run_stage`); a change upstream
changes the downstream stages' input hashes, so exactly the affected stages run again. Keys hold content
hashes, never paths: a moved scene folder or a copied run directory stays cached. A killed run leaves only a
hidden temporary folder, removed on the next start, and the stage reruns from scratch (every stage is seeded
and deterministic), so the final outputs equal those of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from .common.io import atomic_dir, write_json
from .config import RunConfig, config_to_dict
from .scene import Scene

__all__ = ["HashCache", "StageContext", "StageResult", "Stage", "run_stage", "cleanup_stale", "read_manifest",
           "damaged_outputs",
           "upstream", "digest", "file_sha256", "config_hash", "scene_geometry_digest", "scene_layout_digest",
           "scene_gt_digest"]

_VOLATILE = {"manifest.json", "history.json"}  # not hashed: timings vary run to run


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks (scene images, checkpoints and outputs can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class HashCache:
    """sha256 of files, memoised by (size, mtime_ns) in RUN_DIR/.cache/hashes.json (scenes can be large)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.table: dict[str, list] = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):  # a lost or damaged memo only costs rehashing
            self.table = {}
        if not isinstance(self.table, dict):
            self.table = {}
        self.dirty = False

    def file(self, p: Path) -> str:
        """sha256 of `p`'s content; the memo is keyed by resolved path, the returned digest is path-free."""
        p = Path(p)
        st = p.stat()
        key = str(p.resolve())
        hit = self.table.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        hexd = file_sha256(p)
        self.table[key] = [st.st_size, st.st_mtime_ns, hexd]
        self.dirty = True
        return hexd

    def files(self, paths: list[Path], root: Path | None = None) -> str:
        """One digest over (name, content) pairs, names relative to `root` so moving a folder keeps it."""
        h = hashlib.sha256()
        for p in sorted(paths, key=str):
            name = str(Path(p).relative_to(root)) if root is not None else Path(p).name
            h.update(name.encode() + b"\0" + self.file(p).encode() + b"\n")
        return h.hexdigest()

    def save(self) -> None:
        """Write the memo back (only when it changed), so the next run skips rehashing unchanged files."""
        if self.dirty:
            write_json(self.path, self.table)
            self.dirty = False


def digest(obj) -> str:
    """sha256 of a JSON-able object (keys sorted): the one way a stage key is made from plain data."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def scene_geometry_digest(scene: Scene, hashes: HashCache) -> str:
    """Cameras, split and image content: what splatting and image segmentation read."""
    table = [
        [f.stem, f.width, f.height, np.round(f.K, 9).tolist(), np.round(f.c2w, 9).tolist(), hashes.file(f.image)]
        for f in scene.frames.values()
    ]
    return digest({"frames": table, "train": scene.train, "test": scene.test})


def scene_layout_digest(scene: Scene) -> str:
    """Stems, sizes and split only: what copying precomputed masks depends on."""
    return digest({"frames": [[f.stem, f.width, f.height] for f in scene.frames.values()],
                    "train": scene.train, "test": scene.test})


def scene_gt_digest(scene: Scene, hashes: HashCache) -> str:
    """GT label maps (content, names relative to the scene) and the test split: what evaluation reads."""
    paths = [p for f in scene.frames.values() for p in (f.semantics, f.instance) if p is not None]
    names = {p: f"{Path(p).parent.name}/{Path(p).name}" for p in paths}  # path-free: moving the scene keeps it
    return digest({"gt": sorted((names[p], hashes.file(p)) for p in paths), "test": scene.test})


def config_hash(cfg: RunConfig, sections: tuple[str, ...], exclude: tuple[str, ...] = ()) -> str:
    """sha256 of the named config sections' resolved values, minus the dotted fields in `exclude` (fields
    that cannot change the result, and paths whose content is already hashed among the stage's inputs).
    An excluded field the config lacks is ignored here (tests check every stage's list against the config)."""
    d = config_to_dict(cfg)
    payload = {s: d[s] for s in sections}
    for dotted in exclude:
        *parents, leaf = dotted.split(".")
        node = payload
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return digest(payload)


@dataclass
class StageContext:
    """What every stage can read: the resolved config, the scene, the run directory."""

    cfg: RunConfig
    scene: Scene
    run_dir: Path
    device: str
    hashes: HashCache
    quiet: bool = False

    def stage_dir(self, name: str) -> Path:
        """RUN_DIR/<stage>: where a finished stage's outputs live."""
        return self.run_dir / name

    def manifest(self, name: str) -> dict | None:
        """A stage's manifest (None before it has run): upstream digests come from here."""
        return read_manifest(self.stage_dir(name))


@dataclass
class StageResult:
    """What `run_stage` did for one stage ("ran" or "cached") and the manifest now on disk."""

    name: str
    status: str  # "ran" | "cached"
    manifest: dict
    wall_s: float = 0.0
    note: str = ""  # one line on why a stage that looked cached ran again (a damaged output or manifest)


@dataclass(frozen=True)
class Stage:
    """One step and everything its cache key is made of: `inputs(ctx)` digests the files and upstream outputs
    it reads, `sections` names the config sections it depends on (minus the dotted fields in `exclude`);
    `run(ctx, out_dir)` writes its outputs and returns the manifest's `info`."""

    name: str
    inputs: Callable[[StageContext], dict[str, str]]
    run: Callable[[StageContext, Path], dict]
    sections: tuple[str, ...]
    exclude: tuple[str, ...] = ()


def read_manifest(stage_dir: Path) -> dict | None:
    """A stage folder's manifest.json, or None when it is missing or unreadable (then the stage reruns)."""
    try:
        m = json.loads((Path(stage_dir) / "manifest.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return m if isinstance(m, dict) else None


def _outputs_of(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of a finished stage folder's files (timing-only files left out)."""
    return {str(p.relative_to(folder)): file_sha256(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in _VOLATILE}


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (and finished children) so far, in MB."""
    scale = 1.0 / 1024.0 if sys.platform != "darwin" else 1.0 / (1024.0 * 1024.0)  # ru_maxrss: KiB on Linux
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) * scale, 1)


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


def damaged_outputs(stage_dir: Path, manifest: dict, hashes: HashCache) -> list[str]:
    """Outputs of a finished stage that are missing or whose sha256 no longer matches its manifest (a truncated
    checkpoint, a PLY edited by hand, a disk error): such a stage is not a cache hit. Hashes are memoised by
    (size, mtime), so an unchanged folder is not re-read; any write to a file changes its mtime."""
    bad = [rel for rel in manifest.get("outputs", []) if not (stage_dir / rel).is_file()]
    recorded = manifest.get("outputs_sha256")
    if not isinstance(recorded, dict):
        return bad or ["manifest.json (no output hashes)"]
    return bad + [rel for rel, h in recorded.items() if rel not in bad and hashes.file(stage_dir / rel) != h]


def _cache_miss_note(stage: Stage, dest: Path, old: dict | None, ctx: StageContext) -> str | None:
    """None when `old` describes intact outputs; else the one line that says what is damaged."""
    if old is None:
        if (dest / "manifest.json").is_file():
            return f"{stage.name}: {dest / 'manifest.json'} is unreadable; recomputing the stage"
        return ""
    bad = damaged_outputs(dest, old, ctx.hashes)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        return f"{stage.name}: {dest / bad[0]}{more} is missing or does not match its sha256 in the manifest; recomputing the stage"
    return None


def run_stage(stage: Stage, ctx: StageContext, force: bool = False) -> StageResult:
    """The stage cache check: skip the stage when its manifest's input digests and config hash equal today's
    and its outputs are all there with the hashes the manifest recorded; else run it into a temporary folder
    and rename that into place."""
    inputs = stage.inputs(ctx)
    cfg_hash = config_hash(ctx.cfg, stage.sections, stage.exclude)
    dest = ctx.stage_dir(stage.name)
    old = read_manifest(dest)
    note = ""
    if not force and (old is None or (old.get("inputs") == inputs and old.get("config_hash") == cfg_hash)):
        note = _cache_miss_note(stage, dest, old, ctx)
        if note is None:
            return StageResult(stage.name, "cached", old, 0.0)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    with atomic_dir(dest, f"stage {stage.name}") as tmp:
        info = stage.run(ctx, tmp) or {}
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
    return StageResult(stage.name, "ran", manifest, wall, note)


def upstream(ctx: StageContext, name: str, files: tuple[str, ...] | None = None) -> str:
    """Digest of an upstream stage's outputs (all of them, or the named ones) from its manifest."""
    m = ctx.manifest(name)
    if m is None:
        raise RuntimeError(f"stage {name!r} has not run")  # the runner orders stages; this is a bug if it fires
    outs = m.get("outputs_sha256", {})
    if files is not None:
        outs = {k: v for k, v in outs.items() if k in files or any(k.startswith(f + "/") for f in files)}
    return digest(outs)
