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

from .common.io import atomic_dir, write_json
from .config import STAGE_SECTIONS, RunConfig, section_hash
from .scene import Scene

__all__ = ["HashCache", "StageContext", "StageResult", "Stage", "run_stage", "cleanup_stale", "read_manifest",
           "upstream", "digest", "maybe_kill", "scene_geometry_digest", "scene_layout_digest", "scene_gt_digest"]

_VOLATILE = {"manifest.json", "history.json"}  # not hashed: timings vary run to run
_KILL_ENV = "PIPELINE_TEST_KILL_AT"


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
        hexd = h.hexdigest()
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
        if self.dirty:
            write_json(self.path, self.table)
            self.dirty = False


def digest(obj) -> str:
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
    paths = [p for f in scene.frames.values() for p in (f.semantics, f.instance) if p is not None]
    names = {p: f"{Path(p).parent.name}/{Path(p).name}" for p in paths}  # path-free: moving the scene keeps it
    return digest({"gt": sorted((names[p], hashes.file(p)) for p in paths), "test": scene.test})




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


def maybe_kill(name: str, where: str) -> None:
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
    with atomic_dir(dest, f"stage {stage.name}") as tmp:
        info = stage.run(ctx, tmp) or {}
        maybe_kill(stage.name, "middle")
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


def upstream(ctx: StageContext, name: str, files: tuple[str, ...] | None = None) -> str:
    """Digest of an upstream stage's outputs (all of them, or the named ones) from its manifest."""
    m = ctx.manifest(name)
    if m is None:
        raise RuntimeError(f"stage {name!r} has not run")  # the runner orders stages; this is a bug if it fires
    outs = m.get("outputs_sha256", {})
    if files is not None:
        outs = {k: v for k, v in outs.items() if k in files or any(k.startswith(f + "/") for f in files)}
    return digest(outs)
