"""Small, shared file helpers: atomic writes and label PNGs.

Every output of the project goes through `atomic_path` / `atomic_dir` so that a killed run never
leaves a half-written file under its final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

__all__ = [
    "InputError",
    "OUTPUT_MARKER",
    "atomic_path",
    "atomic_dir",
    "claim_dir",
    "check_output_dir",
    "check_output_file",
    "OUTPUT_FILE_KEY",
    "write_json",
    "read_json_if_present",
    "read_document",
    "read_png",
    "write_png",
]


class InputError(Exception):
    """Bad user input. The message is one line that names the file and the fix."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto `path`, on failure delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


OUTPUT_MARKER = ".panoptic-splat"  # in every folder this tool creates; holds the kind of output it is


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _check_parents(path: Path) -> None:
    """An output path below an existing file can never be created: say so before any work starts."""
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise InputError(f"{path}: cannot be created because {parent} is a file, not a folder; "
                                 "pass a path inside a folder")
            return


def _check_ours(path: Path, kind: str) -> None:
    """Refuse to touch `path` unless it is missing, empty, or this tool's own earlier output of `kind`."""
    _check_parents(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise InputError(f"{path}: exists and is not a folder; pass a folder path (an existing file is never replaced)")
    if not path.is_dir():
        return
    marker = path / OUTPUT_MARKER
    other = marker.read_text().strip() if marker.is_file() else None
    if other == kind:
        return
    if other is not None:
        raise InputError(f"{path}: holds this tool's {other} output, not {_article(kind)} {kind} output; pass another folder "
                         "(nothing was changed)")
    if any(path.iterdir()):
        raise InputError(f"{path}: folder is not empty and is not a previous {kind} output of this tool; "
                         "pass a new or empty folder (nothing was changed)")


def _resolve_target(path: str | os.PathLike) -> Path:
    path = Path(path).absolute()
    cwd = Path.cwd().absolute()
    if path == cwd or path in cwd.parents or not path.name:
        raise InputError(f"{path}: is the current folder or one above it; pass a subfolder such as ./out")
    return path


def check_output_dir(path: str | os.PathLike, kind: str) -> Path:
    """The checks of `claim_dir` without creating anything: for validation before any work starts."""
    path = _resolve_target(path)
    _check_ours(path, kind)
    return path


OUTPUT_FILE_KEY = "written_by"  # top-level key of every JSON file a command writes where the user names the file


def check_output_file(path: str | os.PathLike, kind: str) -> Path:
    """Refuse an output FILE path that would replace something this tool did not write.

    The rule: a missing path is fine; a folder (or a path below a file) is refused; an existing file is replaced
    only when it is JSON whose top-level `OUTPUT_FILE_KEY` equals `kind`, i.e. this tool's earlier output."""
    path = Path(path).absolute()
    _check_parents(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; pass a file path for the output, e.g. {path / (kind.split()[-1] + '.json')}")
    if path.exists() or path.is_symlink():
        try:
            ours = json.loads(path.read_text()).get(OUTPUT_FILE_KEY) == kind
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            ours = False
        if not ours or path.is_symlink():
            raise InputError(f"{path}: exists and was not written by `{kind}`; pass a new file path "
                             "(an existing file is replaced only when it is this command's own earlier output)")
    return path


def claim_dir(path: str | os.PathLike, kind: str) -> Path:
    """Create (or reuse) `path` as this tool's output folder of `kind`, for outputs written piece by piece.

    A folder holding someone else's files is refused, never cleaned: the tool only removes what it created."""
    path = _resolve_target(path)
    _check_ours(path, kind)
    path.mkdir(parents=True, exist_ok=True)
    marker = path / OUTPUT_MARKER
    if not marker.is_file():
        marker.write_text(kind + "\n")
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, kind: str) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path`.

    Only an earlier output of the same `kind` (its marker file says so) or an empty folder is replaced; anything
    else is refused before any work is done, so a user's folder is never deleted."""
    path = _resolve_target(path)
    _check_ours(path, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        (tmp / OUTPUT_MARKER).write_text(kind + "\n")
        _check_ours(path, kind)  # it may have changed while the work ran
        if path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_document(path: str | os.PathLike, missing: str) -> Any:
    """JSON (`.json`) or YAML (any other suffix) parsed from `path`, for user-supplied files: a missing file,
    a folder, undecodable bytes or a syntax error is one InputError line naming the file. `missing` is what
    to say (and how to fix it) when the file does not exist."""
    import yaml

    path = Path(path)
    kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
    if path.is_dir():
        raise InputError(f"{path}: is a directory; expected a {kind} file")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: {missing}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read it ({e}); check permissions and encoding (UTF-8)") from None
    try:
        return json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise InputError(f"{path}: invalid {kind} ({' '.join(str(e).split())})") from None


def read_json_if_present(path: str | os.PathLike) -> Any:
    """The JSON in `path`, or None when it is missing or unreadable: for optional run outputs (a stage that
    did not run, a report of a half-finished run) where absence is not an error."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label or colour PNG/JPEG as a numpy array (16-bit PNGs keep their values; a photo's EXIF
    orientation is applied, so a portrait phone picture comes out portrait)."""
    from PIL import ImageOps

    path = Path(path)
    try:
        with Image.open(path) as im:
            arr = np.array(ImageOps.exif_transpose(im) if im.format == "JPEG" else im)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except Exception as e:  # PIL raises many types on corrupt files
        raise InputError(f"{path}: cannot read image ({e}); re-export it as a valid PNG/JPEG") from None
    return arr


def write_png(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write uint8 (grey or RGB) or uint16 (grey, labels) PNG atomically."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint16:
        if arr.ndim != 2:
            raise ValueError("uint16 PNGs must be single-channel")
        im = Image.fromarray(arr)  # PIL picks mode I;16 for uint16
    elif arr.dtype == np.uint8:
        im = Image.fromarray(arr)
    else:
        raise ValueError(f"write_png needs uint8 or uint16, got {arr.dtype}")
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
