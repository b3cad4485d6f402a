"""`scene.yaml` <-> dataclass configs for `python -m pipeline run`.

A run config is plain YAML mapped onto the dataclasses below (nothing pickled), so it can be diffed, versioned
and written back next to the results. Parsing is two-stage: `load_config(CONFIG.yaml)` builds the dataclasses,
then `tyro.cli(RunConfig, default=loaded, args=rest)` applies `--section.field value` overrides; tyro turns the
per-field docstrings into `--help`.

The splat section is a preset name plus overrides of `splat.config.TrainConfig`: the preset is resolved first
(from the command line if given there, else from the YAML), then the YAML's `splat.train` keys, then the
command line. The written `config.yaml` holds the fully resolved values, so loading it again gives the same run.
"""

from __future__ import annotations

import dataclasses
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from panst3r.config import SegmenterConfig
from splat.config import PRESETS as _PRESETS
from splat.config import TrainConfig as _TrainConfig

from .common.io import InputError, atomic_path, read_document

__all__ = [
    "SceneSection",
    "SegmentSection",
    "SplatSection",
    "UpliftSection",
    "RenderSection",
    "EvaluateSection",
    "OutputSection",
    "RunConfig",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "parse_run_args",
    "write_config",
    "project_version",
    "git_commit",
    "CONFIGS_DIR",
]

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"




@dataclass
class SceneSection:
    """Which posed images to work on."""

    path: Optional[Path] = None
    """Scene folder: PanLift layout (color/, pose/, intrinsic/, splits.json), a nerfstudio/instant-ngp
    transforms.json folder, a COLMAP project (images/ + sparse/0/) or a bare folder of images."""
    format: Literal["auto", "panlift", "nerfstudio", "colmap", "images"] = "auto"
    """Scene layout; auto detects it from the folder's content."""
    poses: Literal["file", "colmap", "pointmaps"] = "file"
    """Where the cameras come from: the scene's own (file), structure from motion with pycolmap (colmap), or the
    segmenter's pointmaps (pointmaps: one PanSt3R pass with segment.kind panst3r; SIMULATED from depth with the
    simulated segmenter). With colmap/pointmaps on a posed scene, the estimate is Sim(3)-aligned to the scene's
    poses and scored (metrics.json pose_eval)."""
    downscale: int = 1
    """Work on images downscaled by this factor (cached once, intrinsics scaled exactly), like nerfstudio's
    --downscale-factor."""
    test_every: int = 8
    """COLMAP and image folders without splits.json: every n-th image is a test view (0 = none)."""
    sim_pose_error_deg: float = 0.5
    """SIMULATED pointmaps: per-view rotation error (degrees, std); the translation error is 1 % of the camera
    extent per degree."""
    sim_depth_noise: float = 0.01
    """SIMULATED pointmaps: multiplicative depth noise (std)."""


@dataclass
class SegmentSection(SegmenterConfig):
    """Where the multi-view-consistent 2D panoptic masks come from (the PanSt3R fields apply to kind panst3r)."""

    kind: Literal["simulated", "precomputed", "per_frame", "panst3r", "none"] = "simulated"
    """simulated: the synthetic scene's panoptic_consistent/ maps (GT with synthetic noise, NOT a real model);
    precomputed: a folder of semantics/<stem>.png (uint8) + instance/<stem>.png (uint16, ids consistent across
    views); per_frame: per-frame predictions whose ids are NOT consistent across views (Mask2Former-style:
    semantics/ + instance/, or a PanLift scene's m2f_semantics/ + m2f_instance/), associated in 3D through the
    Gaussians; panst3r: run the PanSt3R segmenter on the train images; none: geometry only (3DGS trained and
    rendered at the test poses, PSNR/SSIM, no label stages). Stuff may carry its own ids or instance 0."""
    path: Optional[Path] = None
    """simulated/precomputed: the folder holding semantics/ and instance/ (simulated defaults to
    SCENE/panoptic_consistent)."""
    include_test: bool = False
    """panst3r: segment train and test images in ONE joint multi-view pass. By default the test images get a
    separate pass (scored as segmenter_on_test), so no test image influences the 3D pipeline."""


@dataclass
class SplatSection:
    """3D Gaussian splatting with the panoptic-colour regulariser (splat.train)."""

    preset: str = "demo"
    """Named TrainConfig preset from splat.config.PRESETS (demo, demo_fast, paper, tiny); the fields under `train`
    override it."""
    train: _TrainConfig = field(default_factory=lambda: _preset_config("demo"))  # type: ignore[valid-type]
    """Training hyper-parameters (resolved: preset + overrides)."""


@dataclass
class UpliftSection:
    """LUDVIG uplifting of the 2D instance masks onto the Gaussians (uplift.ludvig)."""

    ignore_label: int = 0
    """Instance id whose pixels cast no vote (0 = void / unlabelled)."""
    chunk: int = 64
    """Instance channels per rasterisation pass, in uplifting and label rendering (memory vs passes)."""
    top_k: Optional[int] = None
    """Keep only the k best instances per Gaussian (memory N*k instead of N*K); None = keep all (dense)."""
    fallback: Literal["nearest", "void"] = "nearest"
    """Rendered pixels with no labelled Gaussian: take the nearest labelled pixel's instance (at most fill_px
    away), or stay void."""
    min_weight: float = 1e-3
    """Accumulated label weight below which a rendered pixel counts as having no label (then: fallback)."""
    scale: float = 1.0
    """Resolution of the training views the labels are uplifted from, as a fraction of the images' (masks are
    resized nearest-neighbour)."""
    min_labelled_share: float = 0.5
    """A rendered pixel whose labelled Gaussians make up less than this share of its opacity has no label either
    (it is mostly covered by Gaussians no mask labelled): fallback, else void."""
    fill_px: float = 8.0
    """fallback nearest: farthest distance (pixels) a label is carried into unlabelled pixels; farther ones are void."""
    self_check_views: int = 6
    """Train views re-rendered from the uplifted Gaussians and scored against their own masks (0 = no self-check)."""
    associate_min_overlap: float = 0.3
    """per_frame: 3D overlap score (Dice of the Gaussian weight they share) above which two per-view thing segments
    are one instance."""


@dataclass
class RenderSection:
    """Which poses to render the uplifted labels at."""

    poses: Literal["test", "train", "all"] = "test"
    """Frames to render: the scene's test split (what evaluation scores), train split, or all frames."""
    scale: float = 1.0
    """Render resolution as a fraction of the scene images' resolution (predictions are evaluated as written)."""


@dataclass
class EvaluateSection:
    """Scene-level panoptic quality (PanLift protocol) against the scene's GT."""

    enabled: bool = True
    """Evaluate when the scene has GT labels for its test frames."""


@dataclass
class OutputSection:
    """Where results go."""

    dir: Path = Path("runs/default")
    """Run directory: one folder per stage, config.yaml, metrics.json, report.html."""


@dataclass
class RunConfig:
    """A full pipeline run: segment -> splat -> uplift -> render -> evaluate (+ render-then-segment)."""

    scene: SceneSection = field(default_factory=SceneSection)
    segment: SegmentSection = field(default_factory=SegmentSection)
    splat: SplatSection = field(default_factory=SplatSection)
    uplift: UpliftSection = field(default_factory=UpliftSection)
    render: RenderSection = field(default_factory=RenderSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    render_then_segment: Literal["auto", "on", "off"] = "auto"
    """Also render RGB at the test poses and run the image segmenter on the renders (the paper's alternative (i));
    auto = when the segmenter can segment images (panst3r), on = required, off = never."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Compute device of every stage (segmenter, training, uplifting, rendering); auto = CUDA when available."""
    threads: int = 1
    """torch CPU threads for the whole run, training included (0 = torch's default). 1 avoids OpenMP
    oversubscription on small shared machines (bench/render.py compares thread counts)."""
    output: OutputSection = field(default_factory=OutputSection)


_SECTION_TYPES = {f.name: f.type for f in dataclasses.fields(RunConfig)}
_SECTION_CLASSES = {
    "scene": SceneSection,
    "segment": SegmentSection,
    "splat": SplatSection,
    "uplift": UpliftSection,
    "render": RenderSection,
    "evaluate": EvaluateSection,
    "output": OutputSection,
}


def _preset_config(name: str):
    """A fresh copy of splat preset `name` (checked against PRESETS by config_from_dict)."""
    return dataclasses.replace(_PRESETS[name])


# ------------------------------------------------------------------------------------------------
# dict <-> dataclass
# ------------------------------------------------------------------------------------------------


def _coerce(value: Any, typ: Any, where: str, source: str) -> Any:
    """YAML scalar -> the field's type (paths become Path, ints stay ints, literals are checked)."""
    import typing

    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if value is None:
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", object)) and type(None) in args:
            return None
        raise InputError(f"{source}: {where} must not be empty")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", object)):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], where, source)
        return value
    if origin is Literal:
        if value not in args:
            raise InputError(f"{source}: {where} is {value!r}; use one of {', '.join(map(str, args))}")
        return value
    if typ is Path or typ == "Path":
        return Path(str(value))
    if typ is bool:
        if not isinstance(value, bool):
            raise InputError(f"{source}: {where} must be true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{source}: {where} must be an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{source}: {where} must be a number, got {value!r}")
        return float(value)
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        return origin(value)
    return value


def _fill(cls, base, data: dict, where: str, source: str):
    """Return `base` (an instance of dataclass `cls`) with the keys of `data` applied; unknown keys are errors."""
    import typing

    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    if not isinstance(data, dict):
        raise InputError(f"{source}: '{where}' must be a mapping of field: value, got {type(data).__name__}")
    updates = {}
    for key, value in data.items():
        if key not in names:
            near = ", ".join(sorted(names))
            raise InputError(f"{source}: unknown key '{where}.{key}' (valid keys of '{where}': {near})".replace("'.", "'"))
        typ = hints[key]
        sub = getattr(base, key)
        if dataclasses.is_dataclass(sub) and not isinstance(sub, type):
            updates[key] = _fill(type(sub), sub, value, f"{where}.{key}".lstrip("."), source)
        else:
            updates[key] = _coerce(value, typ, f"{where}.{key}".lstrip("."), source)
    return dataclasses.replace(base, **updates)


def config_from_dict(data: dict | None, source: str = "<config>", preset: str | None = None) -> RunConfig:
    """Build a RunConfig from a parsed YAML mapping; `preset` (from the command line) wins over the YAML's."""
    data = dict(data or {})
    for meta in ("version", "git_commit"):  # written by write_config; informative only
        data.pop(meta, None)
    if not isinstance(data, dict):
        raise InputError(f"{source}: top level must be a mapping of sections")
    splat = data.get("splat") or {}
    if not isinstance(splat, dict):
        raise InputError(f"{source}: 'splat' must be a mapping (preset: NAME, train: {{field: value}})")
    name = preset or splat.get("preset", "demo")
    if name not in _PRESETS:
        raise InputError(f"{source}: unknown splat preset {name!r}; use one of {', '.join(sorted(_PRESETS))}")
    base = RunConfig(splat=SplatSection(preset=name, train=_preset_config(name)))
    splat_rest = {k: v for k, v in splat.items() if k != "preset"}
    data["splat"] = splat_rest
    cfg = _fill(RunConfig, base, data, "", source)
    return dataclasses.replace(cfg, splat=dataclasses.replace(cfg.splat, preset=name))


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    return obj


def config_to_dict(cfg: RunConfig) -> dict:
    """Plain, YAML-safe mapping of every resolved field."""
    return _plain(cfg)


def load_config(path: str | Path, preset: str | None = None) -> RunConfig:
    """Read CONFIG.yaml into a RunConfig (unknown keys are one-line errors naming the key and the file)."""
    path = Path(path)
    data = read_document(path, "config file not found; pass a YAML file such as configs/demo.yaml")
    if data is not None and not isinstance(data, dict):
        raise InputError(f"{path}: top level must be a mapping of sections (scene:, segment:, splat:, ...)")
    return config_from_dict(data, str(path), preset)


def _scan_flag(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _choice_flags(cls, prefix: str = "") -> dict[str, tuple[str, tuple]]:
    """--flag (underscore and hyphen spellings) -> (field path, allowed values) for every Literal field."""
    import typing

    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(typ):
            out.update(_choice_flags(typ, path + "."))
        elif typing.get_origin(typ) is Literal:
            for spelling in {path, path.replace("_", "-")}:
                out["--" + spelling] = (path, typing.get_args(typ))
    return out


def _check_choices(rest: list[str]) -> None:
    """A bad value for a choice field is one clear line (tyro's own message is a multi-line box)."""
    flags = _choice_flags(RunConfig)
    for i, a in enumerate(rest):
        name, _, val = a.partition("=")
        if name in flags:
            value = val if _ else (rest[i + 1] if i + 1 < len(rest) else None)
            path, allowed = flags[name]
            if value is not None and value not in allowed:
                raise InputError(f"{name} {value!r} is not valid; use one of {', '.join(map(str, allowed))} ({path})")


def parse_run_args(config_path: str | Path | None, rest: list[str], prog: str = "python -m pipeline run CONFIG.yaml") -> RunConfig:
    """Two-stage parse: CONFIG.yaml -> dataclasses, then `tyro.cli(RunConfig, default=loaded, args=rest)`."""
    import tyro

    _check_choices(rest)
    preset = _scan_flag(rest, "--splat.preset")
    loaded = load_config(config_path, preset) if config_path is not None else config_from_dict({}, "<defaults>", preset)
    return tyro.cli(RunConfig, default=loaded, args=rest, prog=prog,
                    description="Run the staged pipeline; every field of CONFIG.yaml can be overridden here. "
                                "Extra flags of `run`: --from STAGE (recompute from STAGE on), --debug (tracebacks).")


# ------------------------------------------------------------------------------------------------
# provenance, writing
# ------------------------------------------------------------------------------------------------


def project_version() -> str:
    from . import __version__

    return __version__


def git_commit() -> str | None:
    """The checkout's commit (with '-dirty' when tracked files changed), or None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def write_config(cfg: RunConfig, path: str | Path) -> Path:
    """Write the resolved config with the project version and git commit; skip if the content is unchanged."""
    path = Path(path)
    data = {"version": project_version(), "git_commit": git_commit(), **config_to_dict(cfg)}
    text = yaml.safe_dump(data, sort_keys=False)
    if path.is_file() and path.read_text() == text:
        return path
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path
