"""`python -m pipeline run`: validate, then run the stages in order, cache-aware, and summarise.

Everything that can be checked before work starts (scene readable, segmenter inputs present, device) is
checked before the run directory is touched, so bad input never leaves a half-written stage folder. One run
directory is used by one process at a time (a lock file), which makes removing a killed run's temporary
folders safe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import time
from pathlib import Path

from .config import RunConfig, write_config
from .common.io import InputError, atomic_dir, atomic_path, check_output_dir, claim_dir, read_json_if_present, write_json
from .common.threads import torch_threads
from .metrics import HEADLINE_KEYS, HEADLINE_LABELS, format_pct
from .scene import detect_format, load_scene
from .cache import HashCache, StageContext, StageResult, cleanup_stale, run_stage
from .stages import (
    STAGE_ORDER,
    STAGES,
    resolve_device,
    segmenter_can_segment_images,
    validate_segment_inputs,
)

__all__ = ["run_pipeline", "run_lock", "absolute_paths", "export_run", "collect_metrics", "print_summary", "RunOutcome"]


class RunOutcome:
    """What a run produced: per-stage results, the metrics dict and the report path."""

    def __init__(self, run_dir: Path, results: list[StageResult], metrics: dict, report: Path | None, wall_s: float):
        self.run_dir, self.results, self.metrics, self.report, self.wall_s = run_dir, results, metrics, report, wall_s


def _floor_percent(fraction: float) -> str:
    """'99.8%' rounded down, so 43 unlabelled Gaussians out of 19k never read as '100%'."""
    return f"{math.floor(1000 * fraction) / 10:.1f}%"


@contextlib.contextmanager
def run_lock(run_dir: Path):
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(run_dir / ".lock", "w")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{run_dir}: another `pipeline run` is using this run directory; wait for it or pick "
                             "another --output.dir") from None
        yield
    finally:
        fh.close()


def absolute_paths(cfg: RunConfig) -> RunConfig:
    """Resolve the config's paths so config.yaml and the report work from any working directory."""
    def ab(p):
        return None if p is None else Path(p).expanduser().resolve()

    return dataclasses.replace(
        cfg,
        scene=dataclasses.replace(cfg.scene, path=ab(cfg.scene.path)),
        segment=dataclasses.replace(cfg.segment, path=ab(cfg.segment.path), checkpoint=ab(cfg.segment.checkpoint)),
        output=dataclasses.replace(cfg.output, dir=ab(cfg.output.dir)),
    )


def _load_scene(path: Path, fmt: str, test_every: int):
    """load_scene, with the fix for the two first-run mistakes: no scene yet, and a format pinned wrongly."""
    if not path.exists():
        raise InputError(f"{path}: scene folder does not exist; create one first (`make demo` for the synthetic demo "
                         f"scene, or `python -m pipeline synth {path}`) or pass --scene.path DIR")
    try:
        return load_scene(path, fmt, test_every)
    except InputError as e:
        try:
            found = detect_format(path) if fmt != "auto" else fmt
        except InputError:
            found = fmt
        if found == fmt:
            raise
        what = "a bare image folder" if found == "images" else f"a {found} scene"
        raise InputError(f"{path}: looks like {what} but the config pins scene.format {fmt} ({e}); "
                         "pass --scene.format auto") from None


def _validate(cfg: RunConfig, from_stage: str | None) -> tuple:
    if cfg.scene.path is None:
        raise InputError("scene.path is not set; pass --scene.path DIR (a PanLift or nerfstudio scene folder)")
    if from_stage is not None and from_stage not in STAGE_ORDER:
        raise InputError(f"--from {from_stage!r} is not a stage; use one of {', '.join(STAGE_ORDER)}")
    check_output_dir(cfg.output.dir, "run")  # a file, a path below a file or someone else's folder: refused now
    t = cfg.splat.train  # the trainer checks these too, but only once the stages before it have run
    for flag, value, ok, need in (("iterations", t.iterations, t.iterations >= 0, ">= 0"),
                                  ("batch-size", t.batch_size, t.batch_size >= 1, ">= 1"),
                                  ("scale", t.scale, t.scale > 0, "> 0")):
        if not ok:
            raise InputError(f"--splat.train.{flag} {value}: must be {need}")
    scene = _load_scene(Path(cfg.scene.path), cfg.scene.format, cfg.scene.test_every)
    if not scene.train:
        raise InputError(f"{scene.root}: the split has no train frames")
    from .capture import check_poses

    check_poses(scene, cfg.scene.poses, cfg.segment.kind, cfg.scene.downscale)
    device = resolve_device(cfg.device)
    if cfg.render_then_segment == "on" and not segmenter_can_segment_images(cfg.segment.kind):
        raise InputError(f"render_then_segment is on but the {cfg.segment.kind} segmenter cannot segment rendered "
                         "images; use --segment.kind panst3r or --render-then-segment auto")
    return scene, device


def run_pipeline(cfg: RunConfig, from_stage: str | None = None, console=None, quiet: bool = False) -> RunOutcome:
    """Run (or resume) every stage of `cfg` in its output directory; return the outcome."""
    from rich.console import Console
    from rich.markup import escape

    console = console or Console(stderr=False, quiet=quiet)
    t0 = time.perf_counter()
    cfg = absolute_paths(cfg)
    scene, device = _validate(cfg, from_stage)
    run_dir = Path(cfg.output.dir)
    ctx = StageContext(cfg=cfg, scene=scene, run_dir=run_dir, device=device,
                       hashes=HashCache(run_dir / ".cache" / "hashes.json"), quiet=quiet)
    validate_segment_inputs(ctx)
    claim_dir(run_dir, "run")  # after validation (nothing written on bad input); never someone else's folder
    results: list[StageResult] = []
    with torch_threads(cfg.threads), run_lock(run_dir):
        for p in cleanup_stale(run_dir):
            console.print(f"[dim]removed {p.name} left by an interrupted run[/dim]")
        write_config(cfg, run_dir / "config.yaml")
        _record_command(run_dir / "command.txt")
        ctx.scene, capture = _prepare(cfg, scene, run_dir)
        for note in capture.get("notes", []):
            console.print(f"[bold]capture[/bold] {note}")
        _write_if_changed(run_dir / "capture.json", capture)
        scene = ctx.scene
        console.print(f"run dir {run_dir}  ·  scene {scene.root} ({len(scene.train)} train / {len(scene.test)} test)"
                      f"  ·  segmenter {cfg.segment.kind}{' (SIMULATED)' if cfg.segment.kind == 'simulated' else ''}"
                      f"  ·  device {device}")
        forced = False
        for name in STAGE_ORDER:
            forced = forced or name == from_stage
            res = run_stage(STAGES[name], ctx, force=forced)
            results.append(res)
            if res.note:
                console.print(f"[yellow]{escape(res.note)}[/yellow]", soft_wrap=True)  # one line, whatever the width
            skipped = (res.manifest.get("info") or {}).get("skipped")
            if skipped:
                console.print(f"[bold]{name}[/bold] skipped: {skipped}"
                              + (" [dim](cached)[/dim]" if res.status == "cached" else ""))
            elif res.status == "cached":
                console.print(f"[bold]{name}[/bold] [dim]cached (manifest matches)[/dim]")
            else:
                console.print(f"[bold]{name}[/bold] done in {res.wall_s:.1f} s")
        ctx.hashes.save()
        metrics = collect_metrics(run_dir)
        changed = _write_if_changed(run_dir / "metrics.json", metrics)
        report = _report(run_dir, changed or not (run_dir / "report.html").is_file(), console)
    outcome = RunOutcome(run_dir, results, metrics, report, time.perf_counter() - t0)
    print_summary(outcome, console)
    return outcome


def _record_command(path: Path) -> None:
    """The exact command line (and the folder it ran in) for the report's "how this run was made"."""
    import os
    import shlex
    import sys

    argv0 = Path(sys.argv[0])
    if argv0.name == "__main__.py" and argv0.parent.name == "pipeline":
        text = f"cd {shlex.quote(os.getcwd())} && python -m pipeline {shlex.join(sys.argv[1:])}\n"
    else:
        text = f"pipeline.run.run_pipeline() called from Python: {shlex.join(sys.argv)}\n"
    if not path.is_file() or path.read_text() != text:
        with atomic_path(path) as tmp:
            tmp.write_text(text)


def _prepare(cfg: RunConfig, scene, run_dir: Path):
    """Cameras, undistortion and downscaling, cached under RUN_DIR/.cache (pipeline.capture)."""
    from .capture import prepare_scene

    sc = cfg.scene
    return prepare_scene(scene, poses=sc.poses, downscale=sc.downscale, segment_kind=cfg.segment.kind,
                         cache_root=run_dir / ".cache", pose_error_deg=sc.sim_pose_error_deg,
                         depth_noise=sc.sim_depth_noise, segmenter=cfg.segment, device=resolve_device(cfg.device))


def _write_if_changed(path: Path, obj: dict) -> bool:
    if read_json_if_present(path) == json.loads(json.dumps(obj)):
        return False
    write_json(path, obj)
    return True


def _report(run_dir: Path, regenerate: bool, console) -> Path | None:
    html = run_dir / "report.html"
    if not regenerate:
        return html
    try:
        from .report import write_report

        return write_report(run_dir)
    except Exception as e:  # the results are complete without the report; say why it is missing
        console.print(f"[yellow]report not written: {type(e).__name__}: {e}[/yellow]")
        return None


def collect_metrics(run_dir: Path) -> dict:
    """RUN_DIR/metrics.json from the stage folders (the layout in CONTRIBUTING.md)."""
    run_dir = Path(run_dir)
    out: dict = {}
    ev = run_dir / "evaluate"
    for key in ("uplift", "segmenter_on_test"):
        m = read_json_if_present(ev / f"{key}.json")
        if m is not None:
            out[key] = m
    if (ev / "skipped.txt").is_file():
        out["evaluate_skipped"] = (ev / "skipped.txt").read_text().strip()
    rts = run_dir / "render_then_segment"
    if (rts / "skipped.txt").is_file():
        out["render_then_segment"] = {"skipped": (rts / "skipped.txt").read_text().strip()}
    elif read_json_if_present(rts / "eval.json") is not None:
        out["render_then_segment"] = read_json_if_present(rts / "eval.json")
    seg_info = read_json_if_present(run_dir / "segment" / "info.json") or {}
    out["segmenter_kind"] = seg_info.get("kind")
    splat = read_json_if_present(run_dir / "splat" / "manifest.json") or {}
    sinfo = splat.get("info", {})
    rinfo = (read_json_if_present(run_dir / "render" / "manifest.json") or {}).get("info", {})
    # PSNR of the rendered test views against the test images (the render stage's), else the trainer's own
    out["psnr"] = rinfo.get("psnr", sinfo.get("psnr"))
    out["num_gaussians"] = sinfo.get("num_gaussians")
    if rinfo.get("ssim") is not None:
        out["ssim"] = rinfo["ssim"]
    capture = read_json_if_present(run_dir / "capture.json") or {}
    if capture.get("pose_eval") is not None:
        out["pose_eval"] = capture["pose_eval"]
    if capture.get("notes"):
        out["capture"] = capture["notes"]
    timings, rss = {}, {}
    for name in STAGE_ORDER:
        m = read_json_if_present(run_dir / name / "manifest.json")
        if m is not None:
            timings[name] = m.get("wall_s")
            rss[name] = m.get("peak_rss_mb")
    out["timings_s"] = timings
    out["peak_rss_mb"] = rss
    out.update(_checks(run_dir))
    return out


def _checks(run_dir: Path) -> dict:
    """Warnings, self-check and render void share from the uplift and render manifests (pipeline.checks)."""
    uinfo = (read_json_if_present(run_dir / "uplift" / "manifest.json") or {}).get("info", {})
    rinfo = (read_json_if_present(run_dir / "render" / "manifest.json") or {}).get("info", {})
    out: dict = {"warnings": list(uinfo.get("warnings") or []) + list(rinfo.get("warnings") or [])}
    if uinfo.get("self_check") is not None:
        out["self_check"] = uinfo["self_check"]
    for key, name in (("labelled_fraction", "gaussians"), ("labelled_nonvoid_pixels", "nonvoid_train_pixels")):
        if uinfo.get(key) is not None:
            out.setdefault("labelled_share", {})[name] = uinfo[key]
    if rinfo.get("void_share") is not None:
        out["render_void_share"] = rinfo["void_share"]
        out["render_filled_share"] = rinfo.get("filled_share")
    if uinfo.get("association"):
        out["association"] = uinfo["association"]
    return out


def print_summary(outcome: RunOutcome, console) -> None:
    """One table: per-stage status and time, then the scores side by side, then the report path."""
    from rich.table import Table

    m = outcome.metrics
    st = Table(title=f"pipeline run · {outcome.run_dir}", show_lines=False)
    for col in ("stage", "status", "wall (s)", "peak RSS (MB)", "note"):
        st.add_column(col, justify="left" if col in ("stage", "status", "note") else "right")
    for r in outcome.results:
        info = r.manifest.get("info", {}) if r.manifest else {}
        note = ""
        if r.name == "segment":
            per_frame = info.get("kind") == "per_frame"
            note = (f"{info.get('kind', '')}{' (SIMULATED)' if info.get('simulated') else ''}, "
                    f"{info.get('num_instances', '?')} {'per-frame segment ids' if per_frame else 'instances'}")
            conv = (info.get("masks_read") or {}).get("convention")
            if conv:
                note += {"stuff_instance_0": ", stuff with instance 0 (PanLift convention)",
                         "stuff_own_ids": ", stuff with its own ids", "mixed": ", stuff: both conventions"}.get(conv, "")
        elif r.name == "splat" and info:
            bits = []
            if info.get("num_gaussians") is not None:
                bits.append(f"{info['num_gaussians']:,} Gaussians")
            if info.get("psnr") is not None:
                bits.append(f"test PSNR {info['psnr']:.2f} dB")
            note = ", ".join(bits)
        elif "skipped" in info:
            note = "skipped (reason above)"
        elif r.name == "uplift" and info:
            note = (f"{info.get('num_labels', '?')} instances over {info.get('num_views', '?')} views, "
                    f"{_floor_percent(info.get('labelled_fraction', 0))} of Gaussians labelled")
            if info.get("association"):
                a = info["association"]
                note += (f"; {a['num_segments']} per-view segments associated into {a['num_instances']} things "
                         f"in {a['association_s']:.1f} s")
        elif r.name == "render" and info:
            note = f"{info.get('num_views', '?')} views"
        st.add_row(r.name, r.status, f"{r.manifest.get('wall_s', 0):.1f}", f"{r.manifest.get('peak_rss_mb', 0):.0f}", note)
    console.print(st)
    rows = [("uplift (LUDVIG, test poses)", m.get("uplift")),
            (f"{m.get('segmenter_kind') or 'segmenter'}{' (SIMULATED)' if m.get('segmenter_kind') == 'simulated' else ''}"
             " directly on test views", m.get("segmenter_on_test")),
            ("render-then-segment", m.get("render_then_segment"))]
    rows = [(k, v) for k, v in rows if isinstance(v, dict) and "pq" in v]
    if rows:
        t = Table(title="scene-level panoptic quality (PanLift protocol, ×100)")
        for col in ("predictions",) + HEADLINE_LABELS:
            t.add_column(col, justify="left" if col == "predictions" else "right")
        for name, v in rows:
            t.add_row(name, *(format_pct(v.get(k)) for k in HEADLINE_KEYS))
        console.print(t)
    elif m.get("evaluate_skipped"):
        console.print(f"no evaluation: {m['evaluate_skipped']}")
    extra = []
    if m.get("psnr") is not None:
        extra.append(f"test PSNR {m['psnr']:.2f} dB")
    if m.get("num_gaussians") is not None:
        extra.append(f"{m['num_gaussians']:,} Gaussians")
    extra.append(f"total {outcome.wall_s:.1f} s")
    console.print(" · ".join(extra))
    for w in m.get("warnings") or []:
        console.print(f"[bold red]WARNING:[/bold red] {w}")
    if outcome.report is not None:
        console.print(f"report: {outcome.report}")


def export_run(run_dir: str | Path, out: str | Path | None = None, per_instance: bool = False, topk: int = 0) -> Path:
    """`export RUN_DIR`: labelled PLY of all Gaussians + legend.json (+ one PLY per instance) via uplift.export."""
    from splat.ply import load_ply
    from uplift.export import export_labelled
    from uplift.ludvig import UpliftResult

    from .common.classes import PANLIFT_CLASSES
    from .stages import legend_classes

    run_dir = Path(run_dir)
    for need in ("splat/gaussians.ply", "uplift/uplift.npz", "uplift/legend.json"):
        if not (run_dir / need).is_file():
            raise InputError(f"{run_dir / need}: missing; run `python -m pipeline run CONFIG.yaml --output.dir {run_dir}` "
                             "through the uplift stage first")
    if topk < 0:
        raise InputError(f"--topk {topk}: must be >= 0 (0 = do not store per-Gaussian top-k instances)")
    out = Path(out) if out is not None else run_dir / "export"
    check_output_dir(out, "export")  # before reading anything: a user's folder or file is refused, never replaced
    result = UpliftResult.load(run_dir / "uplift" / "uplift.npz")
    gaussians, _extra = load_ply(run_dir / "splat" / "gaussians.ply")
    with atomic_dir(out, "export") as tmp:
        legend = export_labelled(tmp / "labelled.ply", gaussians, result, legend_classes(run_dir / "uplift"),
                                 PANLIFT_CLASSES, per_instance_dir=tmp / "instances" if per_instance else None,
                                 topk=topk)
    also = f", {out / 'instances'}/instance_<id>.ply" if per_instance else ""
    print(f"wrote {out / 'labelled.ply'} ({legend['num_gaussians']:,} Gaussians, "
          f"{len(legend['instances'])} instances){also} and {out / 'legend.json'}")
    return out
