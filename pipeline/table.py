"""The PanLift-table harness: run every benchmark scene found, print ours next to the published rows.

Each scene runs as its own `python -m pipeline run` subprocess (a crash or OOM in one scene cannot take
the others down, and the run directories stay resumable), several at once on a local process pool.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path


from .common.io import InputError, atomic_path, claim_dir, read_document, write_json
from .metrics import format_pct

__all__ = ["BenchmarkScene", "load_benchmark", "run_scene", "aggregate", "format_markdown", "plot_bars", "table_command"]


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
    if not isinstance(spec, dict) or not isinstance(spec.get("datasets"), dict):
        raise InputError(f"{config}: needs a 'datasets:' mapping (see configs/panlift.yaml)")
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise InputError(f"{data_root}: data root does not exist; pass --data-root DIR holding <dataset>/<scene>/ folders")
    found, missing = [], []
    for name, ds in spec["datasets"].items():
        cfg = Path(ds.get("config", ""))
        if not cfg.is_absolute() and not cfg.exists():  # relative to the working dir, else to the table config
            cfg = config.parent / cfg
        for sc in ds.get("scenes", []):
            sid = str(sc["id"] if isinstance(sc, dict) else sc)
            p = data_root / ds.get("folder", name) / sid
            if p.is_dir():
                found.append(BenchmarkScene(name, sid, p, cfg, bool(isinstance(sc, dict) and sc.get("unconfirmed"))))
            else:
                missing.append(f"skipping {name}/{sid}: {p} not found")
    return found, spec.get("published", {}) or {}, missing


def run_scene(scene: BenchmarkScene, out_root: Path, extra_args: list[str] | None = None) -> dict:
    """Run the pipeline on one scene in a subprocess; return its metrics (or an error record)."""
    run_dir = out_root / scene.dataset / scene.scene_id
    cmd = [sys.executable, "-m", "pipeline", "run", str(scene.config), "--scene.path", str(scene.path),
           "--output.dir", str(run_dir), *(extra_args or [])]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = run_dir.parent / f"{scene.scene_id}.log"
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    metrics_path = run_dir / "metrics.json"
    if proc.returncode != 0 or not metrics_path.is_file():
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        return {"dataset": scene.dataset, "scene": scene.scene_id, "error": f"exit {proc.returncode}: {tail[0]} (log: {log})"}
    m = json.loads(metrics_path.read_text())
    up = m.get("uplift") or {}
    return {"dataset": scene.dataset, "scene": scene.scene_id, "unconfirmed": scene.unconfirmed,
            "pq": up.get("pq"), "sq": up.get("sq"), "rq": up.get("rq"), "miou": up.get("miou"),
            "segmenter_pq": (m.get("segmenter_on_test") or {}).get("pq"), "psnr": m.get("psnr")}


def _mean(vals: list) -> float | None:
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def aggregate(rows: list[dict]) -> dict[str, dict]:
    """Dataset-level numbers = arithmetic mean of per-scene numbers (errored scenes excluded, counted)."""
    out: dict[str, dict] = {}
    for ds in sorted({r["dataset"] for r in rows}):
        ok = [r for r in rows if r["dataset"] == ds and "error" not in r]
        out[ds] = {k: _mean([r.get(k) for r in ok]) for k in ("pq", "sq", "rq", "miou", "segmenter_pq", "psnr")}
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
            note = "scene id unconfirmed" if r.get("unconfirmed") else ""
            lines.append(f"| {r['dataset']} | {r['scene']} | {format_pct(r['pq'])} | {format_pct(r['sq'])} | {format_pct(r['rq'])} | "
                         f"{format_pct(r['miou'])} | {format_pct(r['segmenter_pq'])} | {note} |")
    return "\n".join(lines) + "\n"


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


def table_command(config: Path, data_root: Path, out: Path | None = None, workers: int = 2,
                  extra_args: list[str] | None = None) -> dict:
    """Run every benchmark scene found under data_root; write table.md, table.json and table.png."""
    from rich.console import Console

    console = Console()
    scenes, published, missing = load_benchmark(config, data_root)
    for line in missing:
        console.print(line)
    if not scenes:
        raise InputError(f"{data_root}: none of the benchmark scenes in {config} were found")
    out = claim_dir(Path(out) if out else Path("runs/panlift_table"), "table")  # never a user's folder
    console.print(f"running {len(scenes)} scene(s) with {workers} worker(s); logs under {out}")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # threads only wait on subprocesses
        rows = list(pool.map(lambda s: run_scene(s, out, extra_args), scenes))
    for r in rows:
        if "error" in r:
            console.print(f"[red]{r['dataset']}/{r['scene']} failed[/red]: {r['error']}")
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
