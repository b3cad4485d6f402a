"""Gaussians <-> PLY in the standard 3DGS layout, so common splat viewers open our files.

Vertex fields, in this order: x, y, z, nx, ny, nz (zeros), f_dc_0..2, f_rest_0..(3K−1), opacity (logit),
scale_0..2 (log), rot_0..3 (w, x, y, z); then, only after all of those, our own per-Gaussian fields:
pan_0..2 (panoptic colours) when the Gaussians have them and any `extra` arrays (instance_id, class_id, ...).

`f_rest` is channel-major as the 3DGS reference writes it: its features_rest tensor is [N, 3, K], so
f_rest_{c·K + k} holds SH coefficient k of colour channel c. Ours is [N, K, 3], hence the transpose.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from pipeline.common.io import InputError, atomic_path

__all__ = ["save_ply", "load_ply", "check_ply_header", "standard_field_names", "PLY_BASE_FIELDS"]

PLY_BASE_FIELDS = ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2")
_TAIL_FIELDS = ("opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
_PLY_DTYPES = {"i1", "u1", "i2", "u2", "i4", "u4", "f4", "f8"}


def standard_field_names(num_rest: int) -> list[str]:
    """The 3DGS vertex field names for `num_rest` SH coefficients per channel (K), in file order."""
    return [*PLY_BASE_FIELDS, *(f"f_rest_{i}" for i in range(3 * int(num_rest))), *_TAIL_FIELDS]


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t)


def _ply_dtype(name: str, a: np.ndarray) -> np.dtype:
    """A dtype plyfile can write for `a` (int64 narrowed to int32 when it fits; bool -> uint8)."""
    if a.dtype == np.bool_:
        return np.dtype("u1")
    if a.dtype.kind in "iu" and a.dtype.itemsize == 8:
        info = np.iinfo(np.int32 if a.dtype.kind == "i" else np.uint32)
        if a.size and (a.min() < info.min or a.max() > info.max):
            raise ValueError(f"extra field {name!r} does not fit in 32 bits (PLY has no 64-bit integers)")
        return np.dtype("i4" if a.dtype.kind == "i" else "u4")
    code = a.dtype.str.lstrip("<>|=")
    if code not in _PLY_DTYPES:
        raise ValueError(f"extra field {name!r} has dtype {a.dtype}, which PLY cannot store")
    return np.dtype(code)


def save_ply(path: str | Path, gaussians: Mapping[str, Tensor],
             extra: Mapping[str, np.ndarray | Tensor] | None = None) -> Path:
    """Write Gaussians (+ `extra` per-Gaussian arrays [N] or [N, k], named NAME or NAME_0..NAME_k−1) atomically."""
    from plyfile import PlyData, PlyElement

    path = Path(path)
    means = _np(gaussians["means"]).astype(np.float32)  # [N, 3]
    n = len(means)
    sh0 = _np(gaussians["sh0"]).astype(np.float32).reshape(n, 3)  # [N, 1, 3] -> [N, 3]
    shN = gaussians.get("shN")
    rest = np.zeros((n, 0), np.float32) if shN is None else _np(shN).astype(np.float32)  # [N, K, 3]
    K = rest.shape[1] if rest.ndim == 3 else 0
    rest = rest.reshape(n, K, 3).transpose(0, 2, 1).reshape(n, 3 * K)  # channel-major [N, 3K]
    cols: list[tuple[str, np.ndarray]] = []
    cols += [(c, means[:, i]) for i, c in enumerate("xyz")]
    cols += [(c, np.zeros(n, np.float32)) for c in ("nx", "ny", "nz")]
    cols += [(f"f_dc_{i}", sh0[:, i]) for i in range(3)]
    cols += [(f"f_rest_{i}", rest[:, i]) for i in range(3 * K)]
    cols += [("opacity", _np(gaussians["opacities"]).astype(np.float32).reshape(n))]
    scales = _np(gaussians["scales"]).astype(np.float32).reshape(n, 3)
    quats = _np(gaussians["quats"]).astype(np.float32).reshape(n, 4)
    cols += [(f"scale_{i}", scales[:, i]) for i in range(3)]
    cols += [(f"rot_{i}", quats[:, i]) for i in range(4)]
    extras: dict[str, np.ndarray] = {}
    if gaussians.get("pan") is not None:
        extras["pan"] = _np(gaussians["pan"]).astype(np.float32).reshape(n, -1)
    for name, arr in (extra or {}).items():
        if name in extras:
            raise ValueError(f"extra field {name!r} clashes with a Gaussian attribute")
        extras[name] = _np(arr)
    taken = {c for c, _ in cols}
    for name, a in extras.items():
        if a.shape[:1] != (n,) or a.ndim > 2:
            raise ValueError(f"extra field {name!r} must be [N] or [N, k] with N = {n}; got {a.shape}")
        dt = _ply_dtype(name, a)
        sub = [(name, a)] if a.ndim == 1 else [(f"{name}_{i}", a[:, i]) for i in range(a.shape[1])]
        for c, v in sub:
            if c in taken:
                raise ValueError(f"extra field {c!r} clashes with a standard 3DGS field")
            taken.add(c)
            cols.append((c, v.astype(dt)))
    data = np.empty(n, dtype=[(c, v.dtype) for c, v in cols])
    for c, v in cols:
        data[c] = v
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(data, "vertex")], byte_order="<").write(str(tmp))
    return path


_INDEXED = re.compile(r"^(.*)_(\d+)$")


def _group_extras(names: list[str], v) -> dict[str, np.ndarray]:
    """Fields NAME_0..NAME_k−1 (consecutive, in order) -> NAME [N, k]; anything else stays [N]."""
    out: dict[str, np.ndarray] = {}
    i = 0
    while i < len(names):
        m = _INDEXED.match(names[i])
        if m and m.group(2) == "0":
            base, j = m.group(1), i + 1
            while j < len(names) and names[j] == f"{base}_{j - i}":
                j += 1
            out[base] = np.stack([np.asarray(v[c]) for c in names[i:j]], 1)
            i = j
        else:
            out[names[i]] = np.asarray(v[names[i]])
            i += 1
    return out


_PLY_TYPE_BYTES = {"char": 1, "int8": 1, "uchar": 1, "uint8": 1, "short": 2, "int16": 2, "ushort": 2, "uint16": 2,
                   "int": 4, "int32": 4, "uint": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8, "float64": 8}
_MAX_HEADER = 1 << 16


def check_ply_header(path: Path) -> int:
    """Read only the header and check that the file can hold what it claims; return the vertex count.

    A header is free to claim billions of elements; a reader that trusts it allocates (or maps) that much before
    noticing. Each element's rows need at least (its fixed-size properties' bytes; for a list, its count's
    bytes) in binary files and at least 2 bytes per property in ASCII ones, so a claim larger than the bytes
    after the header is refused before anything is allocated."""
    with open(path, "rb") as fh:
        head = fh.read(_MAX_HEADER)
    end = head.find(b"end_header")
    nl = head.find(b"\n", end)
    if not head.startswith(b"ply") or end < 0 or nl < 0:
        raise InputError(f"{path}: cannot read as a PLY file (no 'ply ... end_header' header in its first "
                         f"{_MAX_HEADER} bytes); re-export the Gaussians")
    body = path.stat().st_size - (nl + 1)
    fmt, elements = None, []  # [name, count, min bytes per row, properties]
    for raw in head[:end].decode("ascii", "replace").splitlines():
        w = raw.split()
        try:
            if w[:1] == ["format"]:
                fmt = w[1]
            elif w[:1] == ["element"]:
                elements.append([w[1], int(w[2]), 0, 0])
            elif w[:1] == ["property"] and elements:
                elements[-1][2] += _PLY_TYPE_BYTES[w[2] if w[1] == "list" else w[1]]
                elements[-1][3] += 1
        except (IndexError, KeyError, ValueError):
            raise InputError(f"{path}: malformed PLY header line {raw.strip()!r}; re-export the Gaussians") from None
    need = sum(count * (2 * props if fmt == "ascii" else size) for _, count, size, props in elements)
    if any(count < 0 for _, count, _, _ in elements) or need > body:
        claims = ", ".join(f"{count:,} {name}" for name, count, _, _ in elements)
        raise InputError(f"{path}: the PLY header claims {claims} ({need:,} bytes at least) but only {body:,} bytes "
                         "follow it; the file is truncated or corrupt, re-export the Gaussians")
    return next((count for name, count, _, _ in elements if name == "vertex"), 0)


def load_ply(path: str | Path) -> tuple[dict[str, Tensor], dict[str, np.ndarray]]:
    """Read a 3DGS PLY -> (Gaussian tensors in our stored form incl. `pan` when present, extra fields)."""
    from plyfile import PlyData

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: Gaussian PLY not found; train first (python -m pipeline run ...) or fix the path")
    check_ply_header(path)  # before plyfile allocates what the header claims
    try:
        ply = PlyData.read(str(path))
        v = ply["vertex"]
    except Exception as e:
        raise InputError(f"{path}: cannot read as a PLY with a vertex element ({e}); re-export the Gaussians") from None
    names = list(v.data.dtype.names or ())
    n_rest = sum(1 for c in names if re.fullmatch(r"f_rest_\d+", c))
    want = standard_field_names(n_rest // 3)
    missing = [c for c in want if c not in names]
    if missing or n_rest % 3:
        raise InputError(f"{path}: not a 3DGS Gaussian PLY (missing {', '.join(missing[:6]) or 'f_rest triples'}"
                         f"{' ...' if len(missing) > 6 else ''}); export it with the standard 3DGS fields")
    n = len(v.data)
    K = n_rest // 3

    def cols(fields) -> np.ndarray:
        if not fields:
            return np.zeros((n, 0), np.float32)
        return np.stack([np.asarray(v[c], dtype=np.float32) for c in fields], 1)

    rest = cols([f"f_rest_{i}" for i in range(3 * K)]).reshape(n, 3, K).transpose(0, 2, 1)  # [N, K, 3]
    g = {
        "means": torch.from_numpy(cols(["x", "y", "z"])),
        "quats": torch.from_numpy(cols([f"rot_{i}" for i in range(4)])),
        "scales": torch.from_numpy(cols([f"scale_{i}" for i in range(3)])),
        "opacities": torch.from_numpy(cols(["opacity"]).reshape(n)),
        "sh0": torch.from_numpy(cols([f"f_dc_{i}" for i in range(3)]).reshape(n, 1, 3)),
        "shN": torch.from_numpy(np.ascontiguousarray(rest)),
    }
    extra = _group_extras([c for c in names if c not in set(want)], v)
    pan = extra.pop("pan", None)
    if pan is not None:
        g["pan"] = torch.from_numpy(np.ascontiguousarray(pan, dtype=np.float32))
    return g, extra
