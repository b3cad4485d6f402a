"""`python -m pipeline view RUN_DIR`: the labelled Gaussians in the browser (viser).

Colour by RGB / instance / class and switch instances on and off. viser serves plain HTTP + websocket on
one port, so it works over SSH port forwarding (`ssh -L 8080:localhost:8080 HOST`).
Data preparation is kept in pure functions (tested without a server); only `view_command` touches viser.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common.classes import PANLIFT_CLASSES
from .common.io import InputError
from .common.labels import palette

__all__ = ["SplatData", "load_splats", "colors_for", "visible_mask", "covariances", "view_command", "COLOR_MODES"]

COLOR_MODES = ("rgb", "instance", "class")


@dataclass
class SplatData:
    means: np.ndarray  # [N, 3]
    quats: np.ndarray  # [N, 4] wxyz
    scales: np.ndarray  # [N, 3] log
    opacities: np.ndarray  # [N] logit
    rgb: np.ndarray  # [N, 3] in [0, 1] (SH DC)
    instance: np.ndarray | None  # [N] int (-1 = unlabelled)
    class_id: np.ndarray | None  # [N] int


def load_splats(path: str | Path) -> SplatData:
    """Read a 3DGS PLY (standard fields, optional instance_id / class_id appended) via splat.ply."""
    from splat.gaussians import sh_to_rgb
    from splat.ply import load_ply

    g, extra = load_ply(path)
    inst, cls = extra.get("instance_id"), extra.get("class_id")
    return SplatData(
        means=g["means"].numpy(),
        quats=g["quats"].numpy(),
        scales=g["scales"].numpy(),
        opacities=g["opacities"].numpy(),
        rgb=np.clip(sh_to_rgb(g["sh0"][:, 0]).numpy(), 0.0, 1.0),
        instance=None if inst is None else np.asarray(inst, np.int64).reshape(-1),
        class_id=None if cls is None else np.asarray(cls, np.int64).reshape(-1),
    )


def covariances(d: SplatData) -> np.ndarray:
    """[N, 3, 3] world covariances R S Sᵀ Rᵀ from quaternions and log-scales."""
    q = d.quats / np.linalg.norm(d.quats, axis=-1, keepdims=True).clip(1e-12)
    w, x, y, z = q.T
    R = np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(-1, 3, 3)
    M = R * np.exp(d.scales)[:, None, :]
    return (M @ M.transpose(0, 2, 1)).astype(np.float32)


def colors_for(d: SplatData, mode: str) -> np.ndarray:
    """[N, 3] float32 colours for a colour mode; unlabelled Gaussians are grey in label modes."""
    if mode == "rgb":
        return d.rgb.astype(np.float32)
    ids = d.instance if mode == "instance" else d.class_id
    if mode not in COLOR_MODES:
        raise ValueError(f"unknown colour mode {mode!r}; use one of {COLOR_MODES}")
    if ids is None:
        raise InputError("these Gaussians carry no labels; view uplift/labelled.ply from a run with the uplift stage")
    uniq, inv = np.unique(ids, return_inverse=True)
    cols = palette(np.where(uniq < 0, 0, uniq + (1 if mode == "class" else 0)))
    cols[uniq < 0] = 0.5
    return cols[inv].astype(np.float32)


def visible_mask(d: SplatData, hidden_instances: set[int]) -> np.ndarray:
    """[N] bool: Gaussians whose instance is not switched off."""
    if d.instance is None or not hidden_instances:
        return np.ones(len(d.means), bool)
    return ~np.isin(d.instance, np.fromiter(hidden_instances, np.int64))


def _find_ply(run_dir: Path) -> Path:
    for p in (run_dir / "uplift" / "labelled.ply", run_dir / "splat" / "gaussians.ply", run_dir):
        if p.is_file():
            return p
    raise InputError(f"{run_dir}: no uplift/labelled.ply or splat/gaussians.ply; run `python -m pipeline run ...` first")


def view_command(run_dir: Path, port: int = 8080, host: str = "127.0.0.1", max_seconds: float | None = None) -> None:
    """Serve the run's labelled Gaussians; blocks until Ctrl-C (or max_seconds)."""
    import viser

    run_dir = Path(run_dir)
    d = load_splats(_find_ply(run_dir))
    cov = covariances(d)
    opac = (1.0 / (1.0 + np.exp(-d.opacities)))[:, None].astype(np.float32)
    server = viser.ViserServer(host=host, port=port)
    state = {"mode": "instance" if d.instance is not None else "rgb", "hidden": set()}

    def redraw() -> None:
        keep = visible_mask(d, state["hidden"])
        server.scene.add_gaussian_splats("/splats", centers=d.means[keep], covariances=cov[keep],
                                         rgbs=colors_for(d, state["mode"])[keep], opacities=opac[keep])

    modes = [m for m in COLOR_MODES if m == "rgb" or d.instance is not None]
    dd = server.gui.add_dropdown("colour by", tuple(modes), initial_value=state["mode"])

    @dd.on_update
    def _(_event) -> None:
        state["mode"] = dd.value
        redraw()

    if d.instance is not None:
        with server.gui.add_folder("instances"):
            ids, counts = np.unique(d.instance[d.instance >= 0], return_counts=True)
            for i, n in zip(ids.tolist(), counts.tolist()):
                cls = int(np.bincount(d.class_id[d.instance == i]).argmax()) if d.class_id is not None else -1
                name = PANLIFT_CLASSES[cls] if 0 <= cls < len(PANLIFT_CLASSES) else "?"
                cb = server.gui.add_checkbox(f"{i}: {name} ({n})", initial_value=True)

                def toggle(_event, i=i, cb=cb) -> None:
                    (state["hidden"].discard if cb.value else state["hidden"].add)(i)
                    redraw()

                cb.on_update(toggle)
    redraw()
    print(f"viewer running at http://{host}:{port}  (remote machine? `ssh -L {port}:localhost:{port} HOST`, then open http://localhost:{port})")
    t0 = time.time()
    try:
        while max_seconds is None or time.time() - t0 < max_seconds:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
