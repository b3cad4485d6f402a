"""The PanLift 21-class vocabulary (id 0 = void) and its thing/stuff split.

Ids are the 1-based rows of Panoptic Lifting's `scannet_reduced_things.csv`; the evaluator, the
synthetic scenes and the PanSt3R class mapping all speak this vocabulary.
"""

from __future__ import annotations

__all__ = ["PANLIFT_CLASSES", "THING_IDS", "STUFF_IDS", "NUM_CLASSES", "is_thing"]

PANLIFT_CLASSES: tuple[str, ...] = (
    "void", "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window",
    "counter", "shelves", "curtain", "ceiling", "refrigerator", "television", "person",
    "toilet", "sink", "lamp", "bag", "other",
)
NUM_CLASSES = len(PANLIFT_CLASSES)  # 22, including void
THING_IDS: frozenset[int] = frozenset({4, 5, 6, 14, 15, 16, 17, 18, 20})
# Class 0 sits in the stuff set on purpose: the PanLift evaluator treats a predicted 0 as a stuff class.
STUFF_IDS: frozenset[int] = frozenset(set(range(NUM_CLASSES)) - THING_IDS)


def is_thing(class_id: int) -> bool:
    return int(class_id) in THING_IDS
