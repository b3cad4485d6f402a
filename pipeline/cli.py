"""The one command line: `python -m pipeline SUBCOMMAND ...` ties every package together.

`run` is parsed in two stages (CONFIG.yaml into the dataclasses, then tyro applies `--section.field value`
overrides on top), so it is dispatched before tyro sees the other subcommands; everything else is a tyro
subcommand whose flags and help come from the function signature and docstring. Each subcommand imports its
package lazily: `--help` and `doctor` stay fast and work even when a heavy dependency is broken.

Bad input anywhere raises `InputError`; it is printed here as one line `error: ...` with exit code 2 and no
traceback (`--debug` or PIPELINE_DEBUG=1 shows it).
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
import typing
from pathlib import Path
from typing import Literal, Optional

import tyro
from tyro.conf import Positional

from panst3r.config import SegmentArgs

from .common.io import InputError
from .executors import ExecutorArgs

__all__ = ["main", "run_command", "demo_command"]

_RUN_PROG = "python -m pipeline run CONFIG.yaml"


def _take_flag(args: list[str], flag: str) -> tuple[str | None, list[str]]:
    """Remove `flag VALUE` / `flag=VALUE` from args; return (value, remaining)."""
    out, value, i = [], None, 0
    while i < len(args):
        a = args[i]
        if a == flag:
            if i + 1 >= len(args):
                from .stages import STAGE_ORDER

                raise InputError(f"{flag} needs a value: one of {', '.join(STAGE_ORDER)}")
            value = args[i + 1]
            i += 2
            continue
        if a.startswith(flag + "="):
            value = a.split("=", 1)[1]
        else:
            out.append(a)
        i += 1
    return value, out


class _BoxCatcher:
    """sys.stderr while tyro parses: tyro's multi-line error box is kept back (for `_tyro_call` to fold into one
    line); everything else, such as the progress bars of the command tyro then runs, goes straight through."""

    def __init__(self, real):
        self.real, self.box, self._in_box = real, [], False

    @staticmethod
    def _is_box(text: str) -> bool:  # tyro prints a whole box in one write: a framed or dash-ruled block
        lines = [ln.strip() for ln in text.splitlines()]
        return len(lines) >= 3 and (lines[0].startswith("╭") or any(len(ln) >= 20 and set(ln) <= set("─-") for ln in lines))

    def write(self, text: str) -> int:
        if self._is_box(text) or (self._in_box and text == "\n"):
            self.box.append(text)
            self._in_box = True
            return len(text)
        self._in_box = False
        return self.real.write(text)

    def __getattr__(self, name):  # flush, isatty, fileno, encoding ... of the real stream
        return getattr(self.real, name)


def _fold_box(text: str) -> str:
    """tyro's error box as one line: its sections but the title and the help texts, and where help is."""
    import re

    sections, cur = [], []
    framed = text.lstrip().startswith("╭")
    for raw in text.splitlines():
        line = raw.strip().strip("│╭╮╰╯").strip()
        if line and set(line) <= {"─", "-", " "}:
            sections.append(cur)
            cur = []
        elif line and not line.startswith("─"):  # a framed box's title line ("─ Value error ───") carries no detail
            cur.append(line)
    sections.append(cur)
    if not framed and sections:  # an unframed box starts with its title
        sections = sections[1:]
    found = re.search(r"python -m pipeline[^│\n]*?--help", text)
    hint = found.group(0) if found else "python -m pipeline --help"
    keep = [" ".join(sec) for sec in sections if sec and not sec[0].startswith(("For full helptext", "Argument helptext"))]
    return f"{'; '.join(keep) or 'invalid arguments'}; see `{hint}`"


def _tyro_call(fn, *args, **kwargs):
    """Call a tyro entry point; a parse error (tyro's box, then exit 2) becomes one InputError line."""
    real = sys.stderr
    catcher = sys.stderr = _BoxCatcher(real)
    try:
        return fn(*args, **kwargs)
    except SystemExit as e:
        if e.code not in (0, None) and catcher.box:
            raise InputError(_fold_box("".join(catcher.box))) from None
        raise
    finally:
        sys.stderr = real
        if catcher.box and sys.exc_info()[0] is None:  # a box without an exit: show it as tyro meant
            real.write("".join(catcher.box))


def run_command(args: list[str], quiet: bool = False):
    """`run CONFIG.yaml [--from STAGE] [--section.field value ...]`."""
    from .config import parse_run_args

    from_stage, args = _take_flag(list(args), "--from")
    if not args or args[0] in ("-h", "--help"):
        config = None
        if args and args[0] in ("-h", "--help"):
            parse_run_args(None, ["--help"], prog=_RUN_PROG)  # exits after printing help
        raise InputError("run needs a config file: python -m pipeline run CONFIG.yaml [--section.field value ...] "
                         "(see configs/demo.yaml)")
    config, rest = args[0], args[1:]
    if config.startswith("-"):
        raise InputError(f"run needs the config file first, got {config!r}: python -m pipeline run CONFIG.yaml [overrides]")
    cfg = _tyro_call(parse_run_args, config, rest, prog=_RUN_PROG)  # exits on --help, before torch is imported
    from .run import run_pipeline

    return run_pipeline(cfg, from_stage=from_stage, quiet=quiet)


# ------------------------------------------------------------------------------------------------
# tyro subcommands (functions: their signature is the CLI, their docstring the help)
# ------------------------------------------------------------------------------------------------


def synth(out_dir: Positional[Path], preset: Literal["tiny", "demo", "hard"] = "demo", seed: Optional[int] = None,
          num_frames: Optional[int] = None, width: Optional[int] = None, height: Optional[int] = None,
          num_points: Optional[int] = None) -> None:
    """Generate a synthetic PanLift-layout scene with simulated segmenter outputs (panoptic_consistent/).

    Args:
        out_dir: Folder for the scene; refused if it holds anything but a previous synthetic scene.
        preset: tiny (24 frames at 96x72, for tests), demo (80 frames at 256x192, the `make demo` scene) or hard
            (the demo's size, 13-16 objects with same-class neighbours: bench/associate.py's harder scene).
        seed: Seed for layout, textures, camera and the SIMULATED segmenter noise; the same seed gives the same
            scene (default: the preset's, tiny 0, demo 5, hard 4).
        num_frames: Override the preset's number of frames (every 5th is a test view).
        width: Override the preset's image width in pixels.
        height: Override the preset's image height in pixels.
        num_points: Override the preset's number of points in points3d.ply.
    """
    from . import synth as _synth

    sizes = {"num_frames": num_frames, "width": width, "height": height, "num_points": num_points}
    _synth.synth_command(out_dir, preset=preset, seed=seed, **{k: v for k, v in sizes.items() if v is not None})


def eval(scene: Path, pred: Path, json: Optional[Path] = None) -> None:  # noqa: A001 - the subcommand's name
    """Score predictions with scene-level PQ exactly as the PanLift benchmark does.

    Args:
        scene: PanLift scene folder (splits.json, rs_semantics/, rs_instance/).
        pred: Folder with pred_semantics/<stem>.png and pred_surrogateid/<stem>.png for the test frames.
        json: Also write the full result (per-class numbers included) to this JSON file. An existing file is
            replaced only when an earlier `eval --json` wrote it (its "written_by" key); a folder or any other
            file is refused.
    """
    from .metrics import eval_command

    eval_command(scene, pred, json)


def run(config: Positional[Path], from_: Optional[str] = None) -> None:
    """Run the staged pipeline (segment -> splat -> uplift -> render -> evaluate) described by CONFIG.yaml.

    Any field of the config can be overridden: `--scene.path DIR --segment.kind simulated --output.dir DIR
    --splat.train.iterations 300 ...`; `python -m pipeline run CONFIG.yaml --help` lists them all. Stages whose
    manifest matches are skipped; `--from STAGE` recomputes from that stage on.

    Args:
        config: YAML run config (see configs/).
        from_: Recompute from this stage on (a stage name: segment, splat, ...), even if its manifest matches.
    """
    raise AssertionError("`run` is dispatched before tyro")  # pragma: no cover


def demo_command(out: Path = Path("runs/demo"), preset: Literal["tiny", "demo"] = "demo", quiet: bool = False):
    """Generate the synthetic demo scene (if absent) under OUT and run configs/demo.yaml on it.

    Uses the SIMULATED segmenter (GT with synthetic noise) and the CPU; prints the summary and the report path.

    Args:
        out: Run directory; the scene goes to OUT/scene.
        preset: Synthetic scene preset.
        quiet: Print nothing but errors.
    """
    from .common.io import claim_dir
    from .config import CONFIGS_DIR, parse_run_args
    from .run import run_lock, run_pipeline

    scene_dir = claim_dir(out, "run") / "scene"  # the run folder is claimed first: the scene lives inside it
    with run_lock(Path(out)):  # a second demo on the same folder is refused, never writes the scene twice
        if not (scene_dir / "splits.json").is_file():
            from . import synth as _synth

            _synth.synth_command(scene_dir, preset=preset)
    config = CONFIGS_DIR / "demo.yaml"
    cfg = parse_run_args(config, ["--scene.path", str(scene_dir), "--output.dir", str(out)])
    return run_pipeline(cfg, quiet=quiet)


def demo(out: Path = Path("runs/demo"), preset: Literal["tiny", "demo"] = "demo") -> None:
    """Generate the synthetic demo scene (if absent) and run the full pipeline on it with the SIMULATED segmenter.

    Args:
        out: Run directory; the scene goes to OUT/scene.
        preset: Synthetic scene preset (tiny: a small scene for a smoke run).
    """
    demo_command(out, preset)


def doctor() -> None:
    """Check the environment: torch, CUDA, gsplat, transformers, local model weights, and what each stage needs."""
    from .doctor import doctor_command

    doctor_command()


def view(run_dir: Positional[Path], port: int = 8080, host: str = "127.0.0.1", max_seconds: Optional[float] = None) -> None:
    """Serve a run's labelled Gaussians in the browser (viser): colour by RGB / instance / class.

    Args:
        run_dir: A run directory (uses uplift/labelled.ply, else splat/gaussians.ply).
        port: Port to serve on.
        host: Interface to bind (0.0.0.0 to share on the network).
        max_seconds: Stop after this many seconds (default: until Ctrl-C).
    """
    from .viewer import view_command

    view_command(run_dir, port=port, host=host, max_seconds=max_seconds)


def export(run_dir: Positional[Path], out: Optional[Path] = None, per_instance: bool = False, topk: int = 0) -> None:
    """Export a run's labelled Gaussians: labelled.ply (standard 3DGS fields + instance_id, class_id,
    label_confidence) and legend.json (id -> class, colour, count, 3D box), via uplift.export.

    Args:
        run_dir: A run directory whose uplift stage finished.
        out: Output folder (default RUN_DIR/export).
        per_instance: Also write one PLY per instance (instances/instance_<id>.ply).
        topk: Also store each Gaussian's k best instances and weights as extra PLY fields.
    """
    from .run import export_run

    export_run(run_dir, out, per_instance=per_instance, topk=topk)


def table(config: Positional[Path], data_root: Path, out: Optional[Path] = None,
          run: typing.Annotated[ExecutorArgs, tyro.conf.arg(name="")] = ExecutorArgs()) -> None:
    """Run every PanLift benchmark scene found under DATA_ROOT and print ours next to the published table.

    Each scene is one `pipeline run` (locally or as a Ray task), retried once if it fails; complete runs are
    skipped, so the same command resumes after a crash.

    Args:
        config: Benchmark config (configs/panlift.yaml).
        data_root: Folder with <dataset>/<scene>/ in the PanLift layout.
        out: Output folder (default runs/panlift_table): new, empty, or an earlier table's.
    """
    from .table import table_command

    table_command(config, data_root, out=out, run=run)


def sweep(spec: Positional[Path], data_root: Optional[Path] = None, out: Optional[Path] = None,
          run: typing.Annotated[ExecutorArgs, tyro.conf.arg(name="")] = ExecutorArgs()) -> None:
    """Run a grid or list of config settings x benchmark scenes; one table (a column per varied field) and a plot.

    Args:
        spec: Sweep file (configs/sweep_ablation.yaml).
        data_root: Folder with <dataset>/<scene>/ (default: the sweep file's data_root).
        out: Output folder (default: the sweep file's out): new, empty, or an earlier sweep's.
    """
    from .sweep import sweep_command

    sweep_command(spec, data_root=data_root, out=out, run=run)


def segment(args: typing.Annotated[SegmentArgs, tyro.conf.arg(name="")]) -> None:
    """Segment a folder of images with PanSt3R in one multi-view pass (consistent instance ids)."""
    try:
        from panst3r.cli import segment_command
    except ImportError as e:  # broken install: the other subcommands keep working
        raise InputError(f"the PanSt3R segmenter is not available ({type(e).__name__}: {e}); "
                         "run `python -m pipeline doctor`") from None
    segment_command(args)


def _subcommands() -> dict:
    return {
        "synth": synth,
        "eval": eval,
        "segment": segment,
        "doctor": doctor,
        "run": run,
        "demo": demo,
        "view": view,
        "export": export,
        "table": table,
        "sweep": sweep,
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("PIPELINE_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    try:
        if argv and argv[0] == "run":
            run_command(argv[1:])
            return 0
        _tyro_call(tyro.extras.subcommand_cli_from_dict, _subcommands(), args=argv, prog="python -m pipeline",
                                             description="Multi-view panoptic 3D: PanSt3R segmentation, Gaussian "
                                                         "splatting, LUDVIG uplifting, PanLift scene-PQ evaluation.")
        return 0
    except InputError as e:
        if debug:
            traceback.print_exc()
        msg = " ".join(str(e).split())
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        if debug:
            traceback.print_exc()
        print(f"error: {e.filename or 'an output'}: no space left on device while writing it; free some space and "
              "run the same command again (finished outputs were kept, the unfinished one was removed)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
