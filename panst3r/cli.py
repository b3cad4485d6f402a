"""`python -m pipeline segment`: PanSt3R on a folder of images (arguments as a tyro dataclass).

Every bad input is caught before the (slow) model load and reported as one `InputError` line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch

from pipeline.io import InputError

__all__ = ["SegmentArgs", "segment_command", "list_images", "read_vocabulary", "load_text_embeddings"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class SegmentArgs:
    images: Path
    """Folder of the images to segment jointly (png/jpg; sorted by name; one multi-view pass)."""
    checkpoint: Path
    """PanSt3R checkpoint (.pth) of the v1 or v2 model."""
    out: Path
    """Output folder (instance/, semantics/, confidence/, preview/, segments.json, cameras.json, ...)."""
    classes: str = "panlift"
    """Vocabulary: "panlift" (the 21 PanLift classes, ids as in pipeline.classes) or a text file, one name a line."""
    text_embeddings: Optional[Path] = None
    """Class text embeddings: an .npy/.npz/.pt file [C, 768] in vocabulary order, or a local SigLIP
    (google/siglip-base-patch16-224) directory to encode the names with. Checkpoints do not store them."""
    keyframes: Optional[int] = None
    """Number of keyframes (None: all views up to 50, as the official demo)."""
    keyframe_method: Literal["linspace", "fps"] = "linspace"
    """linspace (official) or fps (farthest-point sampling on encoder descriptors)."""
    merge: Literal["standard_v2", "standard_v1", "qubo"] = "standard_v2"
    """Mask merge: standard_v2 (official default), standard_v1 or qubo (seeded annealer)."""
    seed: int = 0
    """Seed of the QUBO annealer and of a non-default FPS start."""
    device: str = "cpu"
    """Torch device for the network ("cpu", "cuda", "cuda:1")."""
    size: int = 512
    """Network image size (long side; the released checkpoints are 512 models)."""
    resize_to_original: bool = True
    """Write label maps at each original image size (nearest); else at network resolution."""
    progress: bool = True
    """Show progress bars."""


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
        from pipeline.classes import PANLIFT_CLASSES

        return list(PANLIFT_CLASSES[1:])
    path = Path(classes)
    if not path.is_file():
        raise InputError(f"{path}: vocabulary file not found; pass --classes panlift or a text file with one "
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
    path = Path(path)
    if path.is_dir():
        from . import text

        return text.encode_classes(names, path, device=device).float().cpu()
    if not path.is_file():
        raise InputError(f"{path}: text-embedding file not found; pass an .npy/.npz/.pt file or a SigLIP directory")
    try:
        if path.suffix in (".pt", ".pth"):
            emb = torch.load(path, map_location="cpu", weights_only=True)
        else:
            data = np.load(path)
            emb = data[data.files[0]] if hasattr(data, "files") else data
        emb = torch.as_tensor(np.asarray(emb), dtype=torch.float32)
    except Exception as e:
        raise InputError(f"{path}: cannot read text embeddings ({type(e).__name__}: {e}); save a [C, 768] "
                         "float array with numpy.save or torch.save") from None
    if emb.ndim != 2 or emb.shape[0] != len(names):
        raise InputError(f"{path}: text embeddings are {tuple(emb.shape)} but the vocabulary has {len(names)} "
                         "classes; give one row per class name, in vocabulary order")
    return emb


def segment_command(args: SegmentArgs) -> None:
    """Validate the inputs, load the checkpoint, segment the folder, print where the results are."""
    images = list_images(args.images)
    if not Path(args.checkpoint).is_file():
        raise InputError(f"{args.checkpoint}: PanSt3R checkpoint not found; pass --checkpoint PATH to a "
                         "v1/v2 .pth file")
    names = read_vocabulary(args.classes)
    emb = load_text_embeddings(args.text_embeddings, names, args.device)

    import panst3r

    from .segment import segment_images

    model = panst3r.load(args.checkpoint)
    model = model.to(args.device).eval()
    out = segment_images(images, model, emb, names, args.out, num_keyframes=args.keyframes,
                         keyframe_method=args.keyframe_method, merge=args.merge, seed=args.seed, size=args.size,
                         progress=args.progress, resize_to_original=args.resize_to_original)
    print(f"segmented {len(images)} images into {out}")
