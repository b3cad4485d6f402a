"""Users' 2D panoptic masks: the two stuff conventions, per-frame ids, and one clear error per bad file.

A *segment* is a (class, instance) pair. Semantics 0 is void. Masks come in two conventions and both are read:

* stuff with its own ids (this project's SIMULATED masks, PanSt3R): every stuff region carries an instance id
  like a thing does;
* stuff with instance 0 (PanLift's `rs_instance`/`m2f_instance`, most 2D panoptic exports): a stuff pixel's
  instance is 0 and its segment is its class; all such pixels of one stuff class form ONE segment, scene-wide,
  with id `STUFF_ID_OFFSET + class`.

A thing-class pixel with instance 0 is an *unassigned thing* (the segmenter knew the class but not the object):
it is void for training and uplift (it casts no vote), and its share is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .common.classes import NUM_CLASSES, THING_IDS
from .common.io import InputError, read_png
from .common.labels import STUFF_ID_OFFSET

__all__ = ["MaskStats", "read_mask_pair", "segment_ids", "per_frame_dirs", "convention_note", "UINT16_MAX"]

UINT16_MAX = int(np.iinfo(np.uint16).max)
_THINGS = np.zeros(256, dtype=bool)
_THINGS[list(THING_IDS)] = True


@dataclass
class MaskStats:
    """Pixel counts over the frames read, to say which convention the masks use and what was dropped."""

    nonvoid_px: int = 0  # semantics > 0
    stuff_zero_px: int = 0  # stuff class, instance 0 (PanLift convention)
    stuff_own_px: int = 0  # stuff class, instance > 0 (own ids)
    unassigned_thing_px: int = 0  # thing class, instance 0 -> void
    voting_px: int = 0  # pixels with a segment id > 0 after conversion
    frames: int = 0
    frames_with_unassigned: list = field(default_factory=list)

    def add(self, sem: np.ndarray, inst: np.ndarray, ids: np.ndarray, stem: str) -> None:
        valid = sem > 0
        thing = _THINGS[sem]
        self.nonvoid_px += int(valid.sum())
        self.stuff_zero_px += int((valid & ~thing & (inst == 0)).sum())
        self.stuff_own_px += int((valid & ~thing & (inst > 0)).sum())
        un = int((thing & (inst == 0)).sum())
        self.unassigned_thing_px += un
        if un:
            self.frames_with_unassigned.append(stem)
        self.voting_px += int((ids > 0).sum())
        self.frames += 1

    @property
    def convention(self) -> str:
        if self.stuff_zero_px and self.stuff_own_px:
            return "mixed"
        if self.stuff_zero_px:
            return "stuff_instance_0"
        if self.stuff_own_px:
            return "stuff_own_ids"
        return "no_stuff"

    def as_dict(self) -> dict:
        nv = max(self.nonvoid_px, 1)
        return {"convention": self.convention, "nonvoid_pixels": self.nonvoid_px,
                "stuff_instance_0_pixels": self.stuff_zero_px, "stuff_own_id_pixels": self.stuff_own_px,
                "unassigned_thing_pixels": self.unassigned_thing_px,
                "unassigned_thing_share": self.unassigned_thing_px / nv,
                "labelled_nonvoid_share": min(self.voting_px, self.nonvoid_px) / nv,
                "frames_with_unassigned_things": len(self.frames_with_unassigned)}


def convention_note(stats: MaskStats) -> str:
    """One line for the segment stage's note: which stuff convention was read."""
    c = stats.convention
    text = {"stuff_instance_0": "stuff with instance 0 (PanLift convention): one segment per stuff class, scene-wide",
            "stuff_own_ids": "stuff with its own instance ids",
            "mixed": "mixed: some stuff pixels with their own ids, some with instance 0 (one segment per class)",
            "no_stuff": "no stuff pixels"}[c]
    if stats.unassigned_thing_px:
        text += (f"; {stats.unassigned_thing_px / max(stats.nonvoid_px, 1):.1%} of non-void pixels are thing-class "
                 "with instance 0 (unassigned things, treated as void)")
    return text


def read_mask_pair(sem_path: Path, inst_path: Path, width: int, height: int, stem: str
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Validated (semantics uint8 [H, W], instance int64 [H, W]) of one frame; InputError names the bad file.

    The masks must have the frame's size or a same-aspect downscale of it (they are resized nearest later).
    """
    for p, what in ((sem_path, "semantics"), (inst_path, "instance")):
        if not p.is_file():
            raise InputError(f"{p}: missing {what} map for train frame {stem!r}; write semantics/<stem>.png and "
                             "instance/<stem>.png for every train frame")
    sem, inst = read_png(sem_path), read_png(inst_path)
    if sem.ndim != 2:
        raise InputError(f"{sem_path}: semantics must be a single-channel PNG of class ids (uint8 or uint16), "
                         f"got shape {sem.shape}")
    if inst.ndim == 3 and inst.shape[2] >= 3:  # an RGB-encoded id map (COCO panoptic: R + 256 G + 256² B)?
        rgb = inst[..., :3].astype(np.int64)
        top = int((rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]).max())
        if top > UINT16_MAX:
            raise InputError(f"{inst_path}: RGB-encoded instance ids up to {top}, beyond uint16 (0..{UINT16_MAX}); "
                             "renumber the ids and write a single-channel 16-bit PNG")
    if inst.ndim != 2:
        raise InputError(f"{inst_path}: instance must be a single-channel uint16 PNG of ids, got shape {inst.shape}")
    if sem.shape != inst.shape:
        raise InputError(f"{inst_path}: instance map is {inst.shape[1]}x{inst.shape[0]} but {sem_path.name} is "
                         f"{sem.shape[1]}x{sem.shape[0]}; write both at the same size")
    h, w = sem.shape
    if abs(w / h - width / height) > 0.01 or w > width or h > height:
        raise InputError(f"{inst_path}: masks are {w}x{h} but frame {stem!r} is {width}x{height}; "
                         "write masks at the image size (or a same-aspect downscale)")
    inst = inst.astype(np.int64)
    if inst.size and (inst.min() < 0 or inst.max() > UINT16_MAX):
        bad = int(inst.max()) if inst.max() > UINT16_MAX else int(inst.min())
        raise InputError(f"{inst_path}: instance id {bad} outside uint16 (0..{UINT16_MAX}); renumber the ids to fit "
                         "a 16-bit PNG")
    sem = sem.astype(np.int64)
    if sem.size and (sem.min() < 0 or sem.max() >= NUM_CLASSES):
        bad = int(sem.max()) if sem.max() >= NUM_CLASSES else int(sem.min())
        raise InputError(f"{sem_path}: class id {bad} outside the PanLift vocabulary (0..{NUM_CLASSES - 1}); map the "
                         "classes to PanLift ids (pipeline.common.classes)")
    if not (sem > 0).any():
        raise InputError(f"{sem_path}: all-void frame (every pixel has class 0); the segmenter found nothing in "
                         f"frame {stem!r} — drop the frame from the split or fix the masks")
    return sem.astype(np.uint8), inst


def segment_ids(sem: np.ndarray, inst: np.ndarray, where: Path, *, stuff_by_class: bool = False) -> np.ndarray:
    """One segment id per pixel [H, W] int64 (0 = void) under the rules of this module's docstring.

    stuff_by_class: every stuff pixel becomes its class's scene-wide segment, whatever its instance id
    (per-frame masks, whose stuff ids mean nothing across views); thing ids that would collide with the stuff
    ids are renumbered 1..n within the frame (they are per-frame ids anyway).
    """
    sem = np.asarray(sem, dtype=np.int64)
    inst = np.asarray(inst, dtype=np.int64)
    thing = _THINGS[sem]
    if stuff_by_class and (inst[thing] >= STUFF_ID_OFFSET).any():
        u, inv = np.unique(inst[thing & (inst > 0)], return_inverse=True)
        inst = inst.copy()
        inst[thing & (inst > 0)] = inv.reshape(-1) + 1
    stuff = (sem > 0) & ~thing
    zero_stuff = stuff if stuff_by_class else stuff & (inst == 0)
    if zero_stuff.any() and (inst[~zero_stuff] >= STUFF_ID_OFFSET).any():
        raise InputError(f"{where}: instance id {int(inst[~zero_stuff].max())} collides with the stuff segment ids "
                         f"({STUFF_ID_OFFSET}+class) used for stuff pixels with instance 0; keep ids below "
                         f"{STUFF_ID_OFFSET}")
    ids = np.where(inst > 0, inst, 0)
    ids = np.where(zero_stuff, STUFF_ID_OFFSET + sem, ids)
    ids[sem == 0] = 0  # void is semantics 0, whatever the instance map says
    return ids


def per_frame_dirs(src: Path) -> tuple[Path, Path]:
    """(semantics dir, instance dir) of per-frame predictions: DIR/semantics + DIR/instance, or a PanLift scene
    folder's m2f_semantics + m2f_instance."""
    src = Path(src)
    for s, i in (("semantics", "instance"), ("m2f_semantics", "m2f_instance")):
        if (src / s).is_dir() and (src / i).is_dir():
            return src / s, src / i
    raise InputError(f"{src}: no per-frame masks; segment.kind per_frame needs --segment.path DIR holding "
                     "semantics/<stem>.png + instance/<stem>.png, or a PanLift scene folder with m2f_semantics/ + "
                     "m2f_instance/")
