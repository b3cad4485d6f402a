"""The PanLift-table harness: run every benchmark scene found, print ours next to the published rows.

Each scene runs as its own `python -m pipeline run` process, on a local pool or as Ray tasks
(`pipeline.executors`: retries, resume, thread limits); the rows are gathered into table.md/json/png.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .common.io import InputError, atomic_path, claim_dir, read_document, write_json
from .executors import ExecutorArgs, RunSpec, execute
from .metrics import format_pct

__all__ = ["BenchmarkScene", "load_benchmark", "benchmark_from_spec", "scene_specs", "aggregate", "format_markdown",
           "plot_bars", "run_summary", "table_command"]

@dataclass(frozen=True)
class BenchmarkScene:
    dataset: str
    scene_id: str
    path: Path  # data-root/<folder>/<scene_id>
    config: Path  # per-dataset pipeline config
    unconfirmed: bool = False


def load_benchmark(config: Path, data_root: Path) -> tuple[list[BenchmarkScene], dict, list[str]]:
    """Read the table config; return (scenes found, published rows, one line per missing scene)."""
    config = Path(config)
    spec = read_document(config, "table config not found; see configs/panlift.yaml")
    return benchmark_from_spec(spec, str(config), config.parent, data_root)


def benchmark_from_spec(spec, where: str, base_dir: Path, data_root: Path) -> tuple[list[BenchmarkScene], dict, list[str]]:
    """`load_benchmark` on an already-read mapping (a sweep file may hold its benchmark inline)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("datasets"), dict):
        raise InputError(f"{where}: needs a 'datasets:' mapping (see configs/panlift.yaml)")
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise InputError(f"{data_root}: data root does not exist; pass --data-root DIR holding <dataset>/<scene>/ folders")
    found, missing = [], []
    for name, ds in spec["datasets"].items():
        cfg = Path(ds.get("config", ""))
        if not cfg.is_absolute() and not cfg.exists():  # relative to the working dir, else to the table config
            cfg = Path(base_dir) / cfg
        for sc in ds.get("scenes", []):
            sid = str(sc["id"] if isinstance(sc, dict) else sc)
            p = data_root / ds.get("folder", name) / sid
            if p.is_dir():
                found.append(BenchmarkScene(name, sid, p, cfg, bool(isinstance(sc, dict) and sc.get("unconfirmed"))))
            else:
                missing.append(f"skipping {name}/{sid}: {p} not found")
    return found, spec.get("published", {}) or {}, missing


def scene_specs(scenes: list[BenchmarkScene], out_root: Path, extra_args: list[str] | None = None,
                setting: str | None = None) -> list[RunSpec]:
    """One run per scene: OUT_ROOT/<dataset>/<scene>/ with its log next to it (absolute paths: Ray workers
    run elsewhere)."""
    out_root = Path(out_root).resolve()
    label = (("setting", setting),) if setting is not None else ()
    return [RunSpec(label=label + (("dataset", s.dataset), ("scene", s.scene_id)), config=Path(s.config).resolve(),
                    scene_path=Path(s.path).resolve(), run_dir=out_root / s.dataset / s.scene_id,
                    log=out_root / s.dataset / f"{s.scene_id}.log", args=tuple(extra_args or ()))
            for s in scenes]


def _mean(vals: list) -> float | None:
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def aggregate(rows: list[dict]) -> dict[str, dict]:
    """Dataset-level numbers = arithmetic mean of per-scene numbers (errored scenes excluded, counted)."""
    out: dict[str, dict] = {}
    for ds in sorted({r["dataset"] for r in rows}):
        ok = [r for r in rows if r["dataset"] == ds and "error" not in r]
        out[ds] = {k: _mean([r.get(k) for r in ok]) for k in ("pq", "sq", "rq", "pq_th", "pq_st", "miou", "segmenter_pq",
                                                            "psnr", "time_s")}
        out[ds]["num_scenes"] = len(ok)
        out[ds]["num_failed"] = sum(1 for r in rows if r["dataset"] == ds and "error" in r)
    return out


def format_markdown(rows: list[dict], per_dataset: dict, published: dict, datasets: list[str]) -> str:
    lines = ["# PQ^scene on the PanLift benchmark (×100)", "", "| method | " + " | ".join(datasets) + " |",
             "|---|" + "---|" * len(datasets)]
    for method, vals in published.items():
        lines.append(f"| {method} (published) | " + " | ".join(
            "–" if vals.get(d) is None else f"{vals[d]:.1f}" for d in datasets) + " |")
    lines.append("| **ours: uplift (LUDVIG)** | " + " | ".join(format_pct(per_dataset.get(d, {}).get("pq")) for d in datasets) + " |")
    lines.append("| ours: segmenter on test views | " + " | ".join(format_pct(per_dataset.get(d, {}).get("segmenter_pq")) for d in datasets) + " |")
    lines += ["", "## Per scene", "", "| dataset | scene | PQ | SQ | RQ | mIoU | segmenter PQ | note |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['dataset']} | {r['scene']} | – | – | – | – | – | failed: {r['error']} |")
        else:
            notes = ["scene id unconfirmed"] if r.get("unconfirmed") else []
            if r.get("attempts", 1) > 1:
                notes.append(f"{r['attempts']} attempts")
            lines.append(f"| {r['dataset']} | {r['scene']} | {format_pct(r['pq'])} | {format_pct(r['sq'])} | {format_pct(r['rq'])} | "
                         f"{format_pct(r['miou'])} | {format_pct(r['segmenter_pq'])} | {', '.join(notes)} |")
    lines += ["", run_summary(rows)]
    return "\n".join(lines) + "\n"


def run_summary(rows: list[dict]) -> str:
    """'N runs: a ran, b complete (skipped), c failed' (failures are counted, never dropped)."""
    n = {k: sum(1 for r in rows if r.get("status") == k) for k in ("done", "cached", "failed")}
    n["failed"] += sum(1 for r in rows if "error" in r and r.get("status") != "failed")
    return f"{len(rows)} runs: {n['done']} ran, {n['cached']} complete (skipped), {n['failed']} failed"


def plot_bars(path: Path, per_dataset: dict, published: dict, datasets: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(published) + ["ours (uplift)"]
    vals = [[published[m].get(d) for d in datasets] for m in published]
    vals.append([None if per_dataset.get(d, {}).get("pq") is None else 100 * per_dataset[d]["pq"] for d in datasets])
    x = np.arange(len(datasets))
    w = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(datasets)), 4))
    for i, (m, v) in enumerate(zip(methods, vals)):
        ax.bar(x + i * w - 0.4 + w / 2, [np.nan if a is None else a for a in v], w, label=m,
               color="crimson" if m.startswith("ours") else None)
    ax.set_xticks(x, datasets)
    ax.set_ylabel("PQ^scene ×100")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def table_command(config: Path, data_root: Path, out: Path | None = None, run: ExecutorArgs | None = None,
                  extra_args: list[str] | None = None) -> dict:
    """Run every benchmark scene found under data_root; write table.md, table.json and table.png."""
    from rich.console import Console

    console = Console()
    run = run or ExecutorArgs()
    scenes, published, missing = load_benchmark(config, data_root)
    for line in missing:
        console.print(line)
    if not scenes:
        raise InputError(f"{data_root}: none of the benchmark scenes in {config} were found")
    out = claim_dir(Path(out) if out else Path("runs/panlift_table"), "table")
    console.print(f"{len(scenes)} scene(s); run folders and logs under {out}")
    rows = execute(scene_specs(scenes, out, extra_args), run, console)
    for r, s in zip(rows, scenes):
        r["unconfirmed"] = s.unconfirmed
    datasets = [d for d in dict.fromkeys(s.dataset for s in scenes)]
    per_dataset = aggregate(rows)
    md = format_markdown(rows, per_dataset, published, datasets)
    with atomic_path(out / "table.md") as tmp:
        tmp.write_text(md)
    write_json(out / "table.json", {"scenes": rows, "datasets": per_dataset, "published": published})
    plot_bars(out / "table.png", per_dataset, published, datasets)
    console.print(md)
    console.print(f"wrote {out / 'table.md'}, {out / 'table.json'}, {out / 'table.png'}")
    return {"scenes": rows, "datasets": per_dataset}
