"""`pipeline sweep SWEEP.yaml`: ablations as a grid or list of config settings x benchmark scenes.

A sweep file names the scenes (a table config, or the same `datasets:` mapping inline), the fields to vary by
their dotted config names (`splat.train.lambda_pan: [0, 0.5, 1]`, `segment.merge: [standard, qubo]`), and
optional fixed overrides. Every (setting, scene) is one `pipeline run` through the same executors as
`pipeline table`; settings that resolve to the same values share one run. The result is one table with a column
per varied field and the dataset means (of scene PQs, like the PanLift table) per setting, and a bar plot.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common.io import InputError, atomic_path, claim_dir, read_document, write_json
from .executors import ExecutorArgs, RunSpec, execute, row_name
from .metrics import format_pct
from .table import BenchmarkScene, aggregate, benchmark_from_spec, run_summary, scene_specs

__all__ = ["SweepSpec", "load_sweep", "expand_settings", "setting_args", "resolve_settings", "sweep_table",
           "format_sweep_markdown", "plot_sweep", "sweep_command"]

_EXAMPLE = "see configs/sweep_ablation.yaml"


@dataclass
class SweepSpec:
    path: Path
    benchmark: dict  # {"datasets": {...}} as in a table config
    base_dir: Path  # where the benchmark's relative run-config paths resolve
    data_root: Path | None
    out: Path | None
    synthesize: str | None  # a synth preset: generate missing benchmark scenes (SIMULATED segmenter outputs)
    args: list[str]  # fixed overrides for every run
    settings: list[dict[str, Any]]  # {dotted field: value}, in order
    fields: list[str]  # the varied fields, in first-seen order


def expand_settings(grid, settings, where: str) -> list[dict[str, Any]]:
    """`grid:` (a mapping -> every combination; a list of mappings -> the union of their combinations) then
    `settings:` (explicit mappings), in order, exact duplicates dropped."""
    out: list[dict] = []
    grids = [] if grid is None else (grid if isinstance(grid, list) else [grid])
    for g in grids:
        if not isinstance(g, dict) or not g:
            raise InputError(f"{where}: grid: needs a mapping of field -> list of values ({_EXAMPLE})")
        for name, vals in g.items():
            if not isinstance(vals, list) or not vals:
                raise InputError(f"{where}: grid field {name!r} needs a non-empty list of values, got {vals!r}")
        out += [dict(zip(g, combo)) for combo in itertools.product(*g.values())]
    for s in settings or []:
        if not isinstance(s, dict) or not s:
            raise InputError(f"{where}: each entry of settings: must be a mapping of field -> value ({_EXAMPLE})")
        out.append(dict(s))
    unique = []
    for s in out:
        if s not in unique:
            unique.append(s)
    if not unique:
        raise InputError(f"{where}: nothing to sweep; add grid: or settings: ({_EXAMPLE})")
    return unique


def load_sweep(path: Path) -> SweepSpec:
    path = Path(path)
    doc = read_document(path, f"sweep file not found; {_EXAMPLE}")
    if not isinstance(doc, dict):
        raise InputError(f"{path}: top level must be a mapping (benchmark:, grid:, ...; {_EXAMPLE})")
    unknown = sorted(set(doc) - {"benchmark", "data_root", "out", "synthesize", "args", "grid", "settings"})
    if unknown:
        raise InputError(f"{path}: unknown key(s) {', '.join(unknown)}; use benchmark, data_root, out, synthesize, "
                         "args, grid, settings")
    bench = doc.get("benchmark")
    if isinstance(bench, str):
        bpath = Path(bench) if Path(bench).is_absolute() or Path(bench).exists() else path.parent / bench
        bench_doc, base = read_document(bpath, f"benchmark config named in {path} not found"), bpath.parent
    elif isinstance(bench, dict):
        bench_doc, base = bench, path.parent
    else:
        raise InputError(f"{path}: benchmark: must be a table config path or a datasets: mapping ({_EXAMPLE})")
    args = doc.get("args") or []
    if not isinstance(args, list):
        raise InputError(f"{path}: args: must be a list such as [--splat.preset, tiny]")
    settings = expand_settings(doc.get("grid"), doc.get("settings"), str(path))
    fields = list(dict.fromkeys(k for s in settings for k in s))
    return SweepSpec(path=path, benchmark=bench_doc, base_dir=base,
                     data_root=None if doc.get("data_root") is None else Path(doc["data_root"]),
                     out=None if doc.get("out") is None else Path(doc["out"]), synthesize=doc.get("synthesize"),
                     args=[str(a) for a in args], settings=settings, fields=fields)


def setting_args(setting: dict[str, Any]) -> list[str]:
    """{dotted field: value} -> `--field value` overrides as `pipeline run` takes them."""
    out = []
    for name, v in setting.items():
        vals = v if isinstance(v, (list, tuple)) else [v]
        out += [f"--{name}", *("None" if x is None else str(x) for x in vals)]
    return out


def _field_value(cfg, name: str, where: str):
    obj = cfg
    for part in name.split("."):
        if not hasattr(obj, "__dataclass_fields__") or part not in obj.__dataclass_fields__:
            raise InputError(f"{where}: {name!r} is not a config field; use dotted names such as "
                             "splat.train.lambda_pan or segment.merge (`python -m pipeline run CONFIG --help`)")
        obj = getattr(obj, part)
    if hasattr(obj, "__dataclass_fields__"):
        raise InputError(f"{where}: {name!r} is a config section, not a field; name one of its fields")
    return list(obj) if isinstance(obj, tuple) else obj


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _parse_quietly(parse, cfg_path: Path, args: list[str], what: str):
    """`parse_run_args` with tyro's multi-line error box swallowed: a bad override is one InputError line."""
    import contextlib
    import io

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return parse(cfg_path, args)
    except InputError as e:
        raise InputError(f"{what}: {e}") from None
    except SystemExit:
        raise InputError(f"{what} is not a valid `pipeline run` override ({' '.join(args)})") from None


def resolve_settings(sweep: SweepSpec, configs: dict[str, Path]) -> list[tuple[str, str, dict, list[str]]]:
    """(setting key, dataset, resolved values of the varied fields, run args) per setting and dataset.

    Each setting is parsed exactly as `pipeline run` would parse it, so a bad field name or value is one line
    before anything runs; the key is built from the resolved values, so settings that mean the same run
    (e.g. the base value of one ablation inside another) share one run folder."""
    from .config import parse_run_args

    short = [f.split(".")[-1] for f in sweep.fields]
    names = short if len(set(short)) == len(short) else sweep.fields
    for ds, cfg_path in configs.items():  # field names first: a typo is named as such
        base = _parse_quietly(parse_run_args, cfg_path, sweep.args, f"{sweep.path}: args {sweep.args}")
        for f in sweep.fields:
            _field_value(base, f, str(sweep.path))
    out = []
    for setting in sweep.settings:
        args = sweep.args + setting_args(setting)
        for ds, cfg_path in configs.items():
            cfg = _parse_quietly(parse_run_args, cfg_path, args, f"{sweep.path}: setting {setting}")
            values = {f: _field_value(cfg, f, str(sweep.path)) for f in sweep.fields}
            key = ",".join(f"{n}={_fmt(values[f])}" for n, f in zip(names, sweep.fields)).replace("/", "_")
            out.append((key, ds, values, args))
    return out


def _synthesize(sweep: SweepSpec, data_root: Path, console) -> None:
    """Generate the benchmark's missing scenes with `pipeline synth` (seed: the scene entry's `seed`)."""
    from .synth import generate, make_config

    for name, ds in (sweep.benchmark.get("datasets") or {}).items():
        for i, sc in enumerate(ds.get("scenes", [])):
            sid = str(sc["id"] if isinstance(sc, dict) else sc)
            dest = data_root / ds.get("folder", name) / sid
            if not dest.exists():
                seed = sc.get("seed", i) if isinstance(sc, dict) else i
                console.print(f"generating synthetic scene {dest} (preset {sweep.synthesize}, seed {seed}; "
                              "SIMULATED segmenter outputs)")
                generate(dest, make_config(sweep.synthesize, seed=int(seed)))


def sweep_table(rows: list[dict], resolved, datasets: list[str]) -> list[dict]:
    """One entry per (setting, dataset): the varied fields' values and the mean of the scene numbers."""
    out, seen = [], set()
    for key, ds, values, _ in resolved:
        if (key, ds) in seen:
            continue
        seen.add((key, ds))
        agg = aggregate([r for r in rows if r["setting"] == key and r["dataset"] == ds]).get(ds, {})
        out.append({"setting": key, "dataset": ds, "values": values, **agg})
    order = {d: i for i, d in enumerate(datasets)}
    return sorted(out, key=lambda e: order[e["dataset"]])


def format_sweep_markdown(title: str, entries: list[dict], fields: list[str], rows: list[dict]) -> str:
    lines = [f"# Sweep {title}: dataset means of scene numbers (×100; PSNR in dB; time = summed stage seconds per scene)",
             "", "| dataset | " + " | ".join(fields) + " | PQ | PQ_th | PQ_st | mIoU | PSNR | time (s) | scenes |",
             "|---|" + "---|" * (len(fields) + 7)]
    for e in entries:
        psnr = "–" if e.get("psnr") is None else f"{e['psnr']:.2f}"
        t = "–" if e.get("time_s") is None else f"{e['time_s']:.1f}"
        n = f"{e.get('num_scenes', 0)}" + (f" ({e['num_failed']} failed)" if e.get("num_failed") else "")
        lines.append(f"| {e['dataset']} | " + " | ".join(_fmt(e["values"][f]) for f in fields) + " | "
                     + " | ".join(format_pct(e.get(k)) for k in ("pq", "pq_th", "pq_st", "miou"))
                     + f" | {psnr} | {t} | {n} |")
    failed = [r for r in rows if "error" in r]
    if failed:
        lines += ["", "## Failed runs", ""] + [f"- {row_name(r)}: {r['error']}" for r in failed]
    lines += ["", run_summary(rows)]
    return "\n".join(lines) + "\n"


def plot_sweep(path: Path, entries: list[dict], datasets: list[str]) -> None:
    """Grouped bars: PQ per setting, one colour per dataset; PQ_th and PQ_st as markers on each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = list(dict.fromkeys(e["setting"] for e in entries))
    x = np.arange(len(keys))
    w = 0.8 / max(1, len(datasets))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(keys) + 2), 4.2))
    for j, ds in enumerate(datasets):
        by_key = {e["setting"]: e for e in entries if e["dataset"] == ds}

        def col(k):
            return np.array([np.nan if by_key.get(s, {}).get(k) is None else 100 * by_key[s][k] for s in keys])

        xs = x + j * w - 0.4 + w / 2
        ax.bar(xs, col("pq"), w, label=f"{ds} PQ")
        ax.scatter(xs, col("pq_th"), marker="^", color="black", s=14, zorder=3, label="PQ_th" if j == 0 else None)
        ax.scatter(xs, col("pq_st"), marker="v", color="grey", s=14, zorder=3, label="PQ_st" if j == 0 else None)
    ax.set_xticks(x, keys, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("×100 (mean over scenes)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def sweep_command(spec: Path, data_root: Path | None = None, out: Path | None = None,
                  run: ExecutorArgs | None = None) -> dict:
    """Run every setting on every scene found; write sweep.md, sweep.json and sweep.png under OUT."""
    from rich.console import Console

    console = Console()
    run = run or ExecutorArgs()
    sweep = load_sweep(spec)
    out = claim_dir(out or sweep.out or Path("runs") / Path(spec).stem, "sweep")
    data_root = Path(data_root or sweep.data_root or out / "data")
    if sweep.synthesize:
        data_root.mkdir(parents=True, exist_ok=True)
        _synthesize(sweep, data_root, console)
    scenes, _, missing = benchmark_from_spec(sweep.benchmark, str(sweep.path), sweep.base_dir, data_root)
    for line in missing:
        console.print(line)
    if not scenes:
        raise InputError(f"{data_root}: none of the scenes named in {sweep.path} were found")
    datasets = list(dict.fromkeys(s.dataset for s in scenes))
    resolved = resolve_settings(sweep, {s.dataset: s.config for s in scenes})
    specs: dict[Path, RunSpec] = {}
    for key, ds, _, args in resolved:
        mine: list[BenchmarkScene] = [s for s in scenes if s.dataset == ds]
        for s in scene_specs(mine, out / key, args, setting=key):
            specs.setdefault(s.run_dir, s)
    console.print(f"{len(dict.fromkeys(k for k, *_ in resolved))} setting(s) x {len(scenes)} scene(s)")
    rows = execute(list(specs.values()), run, console)
    entries = sweep_table(rows, resolved, datasets)
    md = format_sweep_markdown(Path(spec).name, entries, sweep.fields, rows)
    with atomic_path(out / "sweep.md") as tmp:
        tmp.write_text(md)
    write_json(out / "sweep.json", {"fields": sweep.fields, "settings": entries, "runs": rows})
    plot_sweep(out / "sweep.png", entries, datasets)
    console.print(md)
    console.print(f"wrote {out / 'sweep.md'}, {out / 'sweep.json'}, {out / 'sweep.png'}")
    return {"settings": entries, "runs": rows}
