"""`python -m pipeline segment`: PanSt3R on a folder of images (arguments: `panst3r.config.SegmentArgs`).

Every bad input is caught before the (slow) model load and reported as one `InputError` line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from pipeline.common.io import InputError

from .config import SegmentArgs

__all__ = ["SegmentArgs", "segment_command", "list_images", "read_vocabulary", "load_text_embeddings",
           "class_vocabulary", "Vocabulary"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder, sorted by name; one-line errors for a missing or image-less folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: images folder not found; pass --images DIR holding the views to segment")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{folder}: no images (.png/.jpg) in this folder; put the views to segment there")
    return files


def read_vocabulary(classes: str) -> list[str]:
    """"panlift" -> the PanLift names without void (so class id = index + 1 = PanLift id); else a text file."""
    if classes == "panlift":
        from pipeline.common.classes import PANLIFT_CLASSES

        return list(PANLIFT_CLASSES[1:])
    path = Path(classes)
    if not path.is_file():
        raise InputError(f"{path}: vocabulary file not found; pass --vocabulary panlift or a text file with one "
                         "class name per line")
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not names:
        raise InputError(f"{path}: the vocabulary file lists no class names; write one name per line")
    return names


def load_text_embeddings(path: Optional[Path], names: list[str], device: str = "cpu") -> torch.Tensor:
    """[C, E] float32 text embeddings for `names` from a tensor file or a local SigLIP directory."""
    if path is None:
        raise InputError("PanSt3R checkpoints do not store class text embeddings; pass --text-embeddings FILE "
                         "(.npy/.pt [C, 768]) or a local SigLIP directory")
    from . import text

    path = Path(path)
    if path.is_dir():
        return text.encode_classes(names, path, device=device).float().cpu()
    if not path.is_file():
        raise InputError(f"{path}: text-embedding file not found; pass an .npy/.pt file or a SigLIP directory")
    return text.load_embeddings(path, names)


@dataclass
class Vocabulary:
    names: list[str]  # class names, written into segments.json
    prompts: list[str]  # what the text model encodes (PanLift's "other" is prompted as "object")
    class_ids: list[int]  # id written into semantics maps for each name
    embeddings: torch.Tensor  # [C, E] float32


def class_vocabulary(classes: str = "panlift", text_embeddings: Optional[Path] = None, device: str = "cpu", *,
                     panlift_ids: bool = False, how: str = "--text-embeddings FILE") -> Vocabulary:
    """Names, semantics ids and text embeddings of a vocabulary ("panlift", a names file or a .pt vocabulary).

    Embeddings: `text_embeddings` (file or SigLIP directory), else those stored in a .pt vocabulary, else
    SigLIP from the offline HF cache; if none works, one InputError line that names `how` (what to pass).
    panlift_ids: semantics ids are PanLift ids (names mapped through panst3r/vocab; unknown -> "other"),
    else index + 1 ("panlift" gives the same ids either way).
    """
    from . import text

    stored = None
    if classes == "panlift":
        prompts, ids = text.panlift_vocabulary()
        names = read_vocabulary("panlift")
    elif Path(classes).suffix in (".pt", ".pth") and Path(classes).is_file():
        try:
            obj = torch.load(classes, map_location="cpu", weights_only=True)
        except Exception as e:
            raise InputError(f"{classes}: cannot read the vocabulary file ({type(e).__name__}); write it with "
                             "panst3r.text.save_embeddings(path, embeddings, class_names)") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("class_names"), (list, tuple)):
            raise InputError(f"{classes}: a .pt vocabulary must hold {{'embeddings', 'class_names'}}; write it with "
                             "panst3r.text.save_embeddings(path, embeddings, class_names)")
        names = [str(n) for n in obj["class_names"]]
        prompts, ids = names, list(range(1, len(names) + 1))
        stored = text.load_embeddings(classes, names)
    else:
        names = read_vocabulary(classes)
        prompts, ids = names, list(range(1, len(names) + 1))
    if panlift_ids and classes != "panlift":
        ids = text.map_to_panlift(names)
    if text_embeddings is not None:
        emb = load_text_embeddings(text_embeddings, prompts, device)
    elif stored is not None:
        emb = stored
    else:
        try:
            emb = text.encode_classes(prompts, device=device).float().cpu()
        except InputError as e:
            raise InputError(f"PanSt3R checkpoints do not store class text embeddings and SigLIP could not give them "
                             f"offline ({e}); pass {how}") from None
    return Vocabulary(names, list(prompts), [int(i) for i in ids], emb)


def segment_command(args: SegmentArgs) -> None:
    """Validate the inputs, load the checkpoint, segment the folder, print where the results are."""
    images = list_images(args.images)
    if args.checkpoint is None:
        raise InputError("segment needs --checkpoint PATH to a PanSt3R v1/v2 .pth file")
    if not Path(args.checkpoint).is_file():
        raise InputError(f"{args.checkpoint}: PanSt3R checkpoint not found; pass --checkpoint PATH to a "
                         "v1/v2 .pth file")
    from .segment import load_segmenter

    segmenter = load_segmenter(args, args.device,
                               how="--text-embeddings FILE (.npy/.pt [C, 768]) or a local SigLIP directory")
    out = segmenter.segment(images, args.out, progress=args.progress, resize_to_original=args.resize_to_original)
    print(f"segmented {len(images)} images into {out}")
