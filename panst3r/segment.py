"""Headless PanSt3R segmentation of an image folder: one multi-view pass, consistent ids, files on disk.

The official repository has no headless path (its demo only feeds a viser viewer and saves nothing).
`segment_images` runs the same flow — load and crop to the network size, keyframes, `model.infer`, merge,
cameras — and writes one folder atomically:

    instance/<stem>.png      uint16 segment ids, 0 = void, shared by all views
    semantics/<stem>.png     uint8 class ids (0 = void): `class_ids[vocabulary index]`, by default index + 1,
                             which for the "panlift" vocabulary are the PanLift ids of pipeline.common.classes
    confidence/<stem>.npy    float16 [H, W] merge confidence at network resolution
    preview/<stem>.jpg       instance colours blended over the network-resolution image
    segments.json            {id: {class_id, class_name, score, area, query_id}}  (the run-dir contract)
    pointmaps.npz            pts3d, pts3d_local [V, H, W, 3] and conf [V, H, W] (float32), stems
                             (unless `write_pointmaps=False`: 24 bytes a pixel, large for long sequences)
    cameras.json             per stem: K (+0.5 pixel-centre convention), c2w (OpenCV, world = first keyframe)
                             at network resolution, plus the crop box and scale back to the original image
    meta.json                kind "panst3r", variant, merge, seed, keyframes, vocabulary, sizes

Label maps are written at the original image size (nearest-neighbour, pixels outside the centre crop void)
unless `resize_to_original=False`; everything else stays at network resolution, with the mapping recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.common.io import InputError, atomic_dir, write_json, write_png
from pipeline.common.labels import overlay

from .cameras import recover_cameras
from .config import SegmenterConfig
from .keyframes import image_descriptors, select_keyframes
from .postprocess import PanopticResult, panoptic_qubo, panoptic_standard
from .preprocess import UnreadableImage, allowed_sizes
from .preprocess import load_images as _load

__all__ = ["segment_images", "load_images", "LoadedImages", "merge_output", "MERGES",
           "checkpoint_image_size", "Segmenter", "load_segmenter"]

MERGES = ("standard_v2", "standard_v1", "qubo")


@dataclass
class LoadedImages:
    images: torch.Tensor  # [V, 3, H, W] float32 in [-1, 1]
    stems: list[str]
    original_hw: list[tuple[int, int]]  # per view (H0, W0)
    crops: list[tuple[int, int, int, int]]  # per view (x0, y0, crop_w, crop_h) in original pixels


def load_images(paths: Sequence[Path], size: int = 512, patch: int = 16) -> LoadedImages:
    """`panst3r.preprocess.load_images` in the official demo's portrait mode (transposed sizes, no rotation),
    with the allowed-size table for a model trained at long side `size`; unreadable files -> InputError."""
    if not paths:
        raise ValueError("no images to segment")
    try:
        images, infos = _load(list(paths), portrait="native", allowed=allowed_sizes(size, patch))
    except UnreadableImage as e:
        raise InputError(str(e)) from None
    crops = [(l, t, r - l, b - t) for l, t, r, b in (i.crop_box for i in infos)]
    return LoadedImages(images, [Path(p).stem for p in paths], [(i.orig_size[1], i.orig_size[0]) for i in infos],
                        crops)


def merge_output(out, merge: str = "standard_v2", seed: int = 0) -> PanopticResult:
    """Run the chosen merge on a `PanSt3ROutput`."""
    if merge == "qubo":
        return panoptic_qubo(out.pred_logits, out.pred_masks, out.true_shape, seed=seed)
    if merge in ("standard_v2", "standard_v1"):
        return panoptic_standard(out.pred_logits, out.pred_masks, out.true_shape, version=merge[-2:])
    raise ValueError(f"unknown merge {merge!r}; use one of {', '.join(MERGES)}")


def checkpoint_image_size(path: Path, default: int = 512) -> int:
    """Long side of the images the checkpoint was trained at: the MUSt3R encoder's `img_size` in its `args`
    (512 for the released "_512_" models); `default` when the args do not say."""
    from .checkpoint import parse_constructor, read_checkpoint

    args = read_checkpoint(path).get("args")
    spec = getattr(args, "must3r_encoder", None)
    try:
        img = parse_constructor(spec)["kwargs"].get("img_size") if isinstance(spec, str) else None
    except (SyntaxError, ValueError):
        img = None
    if isinstance(img, int) and img > 0:
        return img
    if isinstance(img, (list, tuple)) and img and all(isinstance(v, int) and v > 0 for v in img):
        return max(img)
    return default


@dataclass
class Segmenter:
    """A loaded PanSt3R segmenter: what one multi-view pass needs, read once from a `SegmenterConfig`."""

    model: torch.nn.Module
    vocab: object  # panst3r.cli.Vocabulary: names, semantics ids, embeddings [C, E]
    size: int  # network long side
    config: SegmenterConfig
    device: str

    def segment(self, images: Sequence[Path], out_dir: Path, *, progress: bool = True,
                resize_to_original: bool = True, write_pointmaps: bool = True) -> Path:
        """`segment_images` with the config's keyframes, merge and seed (see the module docstring)."""
        c = self.config
        return segment_images(images, self.model, self.vocab.embeddings.to(self.device), self.vocab.names, out_dir,
                              num_keyframes=c.keyframes or None, keyframe_method=c.keyframe_method, merge=c.merge,
                              seed=c.seed, size=self.size, progress=progress, resize_to_original=resize_to_original,
                              class_ids=self.vocab.class_ids, write_pointmaps=write_pointmaps)


def load_segmenter(cfg: SegmenterConfig, device: str = "cpu", *, panlift_ids: bool = False,
                   how: str = "--text-embeddings FILE") -> Segmenter:
    """Vocabulary (checked before the slow model load), checkpoint, network size: the one loader of both the
    `segment` command and the pipeline stage. `panlift_ids` and `how` as in `panst3r.cli.class_vocabulary`."""
    from .checkpoint import load
    from .cli import class_vocabulary

    if cfg.checkpoint is None:
        raise ValueError("load_segmenter needs cfg.checkpoint; validate the inputs first")
    vocab = class_vocabulary(cfg.vocabulary, cfg.text_embeddings, device, panlift_ids=panlift_ids, how=how)
    model = load(cfg.checkpoint, device=device)
    if vocab.embeddings.shape[1] != model.config.text_dim:
        source = cfg.text_embeddings or cfg.vocabulary
        raise InputError(f"{source}: text embeddings are {vocab.embeddings.shape[1]} wide but {cfg.checkpoint} "
                         f"expects {model.config.text_dim}; encode the classes with the model's text encoder "
                         "(SigLIP-base: 768)")
    size = cfg.size if cfg.size is not None else checkpoint_image_size(cfg.checkpoint)
    return Segmenter(model, vocab, size, cfg, str(device))


def _to_original(label: np.ndarray, hw0: tuple[int, int], crop: tuple[int, int, int, int]) -> np.ndarray:
    """Network-resolution labels -> original image size (nearest); outside the centre crop -> 0."""
    x0, y0, cw, ch = crop
    t = torch.from_numpy(label.astype(np.int64))[None, None].double()
    up = F.interpolate(t, size=(ch, cw), mode="nearest")[0, 0].numpy().astype(label.dtype)
    full = np.zeros(hw0, dtype=label.dtype)
    full[y0:y0 + ch, x0:x0 + cw] = up
    return full


def segment_images(image_paths: Sequence[Path], model, text_embeddings: torch.Tensor, class_names: Sequence[str],
                   out_dir: Path, *, num_keyframes: Optional[int] = None, keyframe_method: str = "linspace",
                   merge: str = "standard_v2", seed: int = 0, size: int = 512, progress: bool = True,
                   resize_to_original: bool = True, class_ids: Optional[Sequence[int]] = None,
                   write_pointmaps: bool = True) -> Path:
    """Segment images jointly with a PanSt3R model and write the folder described in the module docstring.

    class_ids: the id written for each vocabulary entry (1..255; default index + 1), e.g. the PanLift ids of
    a vocabulary whose names map onto PanLift classes.
    """
    if merge not in MERGES:
        raise ValueError(f"unknown merge method {merge!r}; use one of {', '.join(MERGES)}")
    if text_embeddings.ndim != 2 or text_embeddings.shape[0] != len(class_names):
        raise ValueError(f"text embeddings are {tuple(text_embeddings.shape)} but the vocabulary has "
                         f"{len(class_names)} classes; give one embedding row per class name")
    if len(class_names) > 254:
        raise InputError(f"{len(class_names)} classes do not fit uint8 semantics maps (max 254); shorten the vocabulary")
    ids = list(range(1, len(class_names) + 1)) if class_ids is None else [int(c) for c in class_ids]
    if len(ids) != len(class_names) or not all(1 <= c <= 255 for c in ids):
        raise ValueError(f"class_ids must give one id in 1..255 per class name ({len(class_names)}), got {ids}")
    paths = [Path(p) for p in image_paths]
    if not paths:
        raise ValueError("no images to segment; pass a folder holding .png/.jpg images")
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise InputError(f"two images share the stem {dup!r}; rename one so that every output file is unique")
    patch = getattr(getattr(model, "config", None), "patch_size", 16)
    loaded = load_images(paths, size=size, patch=patch)
    V = loaded.images.shape[0]

    encoded = None
    if keyframe_method == "fps":
        encoded = model.encode(loaded.images, progress=progress)
        kf = select_keyframes(V, num_keyframes, "fps", descriptors=image_descriptors(encoded.x_enc), seed=seed)
    else:
        kf = select_keyframes(V, num_keyframes, keyframe_method, seed=seed)
    kwargs = {"encoded": encoded} if encoded is not None else {}
    with torch.no_grad():
        out = model.infer(loaded.images, kf, text_embeddings, progress=progress, **kwargs)
    res = merge_output(out, merge, seed)
    Ks, c2w = recover_cameras(out)
    H, W = out.true_shape

    names = list(class_names)
    seg_class = {s["id"]: ids[int(s["category_id"])] for s in res.segments}  # 0 stays void
    lut = np.zeros(max(seg_class, default=0) + 1, dtype=np.uint8)
    for sid, c in seg_class.items():
        lut[sid] = c
    if max(seg_class, default=0) > np.iinfo(np.uint16).max:
        raise ValueError("more segments than uint16 ids")

    out_dir = Path(out_dir)
    with atomic_dir(out_dir, "panst3r segmentation") as tmp:
        for d in ("instance", "semantics", "confidence", "preview"):
            (tmp / d).mkdir()
        cams = {}
        for v, stem in enumerate(loaded.stems):
            inst = res.pan[v].astype(np.uint16)  # [H, W]
            sem = lut[res.pan[v]]
            rgb = ((loaded.images[v].permute(1, 2, 0).numpy() * 0.5 + 0.5).clip(0, 1) * 255 + 0.5).astype(np.uint8)
            Image.fromarray(overlay(rgb, inst)).save(tmp / "preview" / f"{stem}.jpg", quality=90)
            np.save(tmp / "confidence" / f"{stem}.npy", res.conf[v].astype(np.float16))
            if resize_to_original:
                inst = _to_original(inst, loaded.original_hw[v], loaded.crops[v])
                sem = _to_original(sem, loaded.original_hw[v], loaded.crops[v])
            write_png(tmp / "instance" / f"{stem}.png", inst)
            write_png(tmp / "semantics" / f"{stem}.png", sem)
            x0, y0, cw, ch = loaded.crops[v]
            cams[stem] = {"K": Ks[v].tolist(), "c2w": c2w[v].tolist(), "width": W, "height": H,
                          "original_width": loaded.original_hw[v][1], "original_height": loaded.original_hw[v][0],
                          "crop_xywh": [x0, y0, cw, ch], "scale_to_original": cw / W}
        segments = {str(s["id"]): {"class_id": seg_class[s["id"]], "class_name": names[int(s["category_id"])],
                                   "score": float(s["score"]), "area": int(s["area"]), "query_id": int(s["query_id"])}
                    for s in res.segments}
        write_json(tmp / "segments.json", segments)
        write_json(tmp / "cameras.json", cams)
        if write_pointmaps:
            np.savez(tmp / "pointmaps.npz", pts3d=out.pts3d.float().numpy(),
                     pts3d_local=out.pts3d_local.float().numpy(), conf=out.conf.float().numpy(),
                     stems=np.array(loaded.stems))
        write_json(tmp / "meta.json", {
            "kind": "panst3r", "variant": getattr(model, "variant", None), "merge": merge, "seed": seed,
            "keyframes": [loaded.stems[k] for k in kf], "keyframe_method": keyframe_method,
            "vocabulary": names, "class_ids": ids, "semantics": "class id = class_ids[vocabulary index], 0 = void",
            "network_hw": [H, W], "labels_at": "original" if resize_to_original else "network",
            "stems": loaded.stems, "num_segments": len(res.segments),
        })
    return out_dir
