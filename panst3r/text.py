"""Class-name text embeddings for the PanSt3R class head (SigLIP-base text tower).

"This is a photo of {}." -> tokenizer (padding to max length, 64) -> `SiglipTextModel.pooler_output` ->
L2 normalisation, as the official text encoder. The model comes from a local directory or the user's HF
cache (`local_files_only=True`): nothing is downloaded. Embeddings are cached on disk keyed by model +
template + class list, so the text model is loaded once per class list, and a class list may also come
with a precomputed embedding file (.npy / .pt).

Vocabularies ship as data in `panst3r/vocab/`: the PanLift classes with their prompts, and a mapping from
other names (ScanNet++-style) to PanLift ids.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from pipeline.common.io import InputError, atomic_path

__all__ = ["DEFAULT_TEXT_MODEL", "TEMPLATE", "encode_classes", "load_embeddings", "save_embeddings",
           "panlift_vocabulary", "map_to_panlift", "default_cache_dir"]

DEFAULT_TEXT_MODEL = "google/siglip-base-patch16-224"
TEMPLATE = "This is a photo of {}."
VOCAB_DIR = Path(__file__).resolve().parent / "vocab"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "panoptic-splat" / "text-embeddings"


def _cache_key(model: str, template: str, names: Sequence[str]) -> str:
    blob = json.dumps({"model": model, "template": template, "classes": list(names)}, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


@lru_cache(maxsize=2)
def _text_model(model: str, device: str):
    """(tokenizer, SiglipTextModel) from a local path or the HF cache; never downloads."""
    try:
        from transformers import AutoTokenizer, SiglipTextModel
    except ImportError as e:  # pragma: no cover
        raise InputError(f"transformers is needed for text embeddings ({e}); pip install transformers") from None
    try:
        tok = AutoTokenizer.from_pretrained(model, local_files_only=True)
    except (OSError, ValueError, ImportError) as e:
        hint = ("pip install sentencepiece (the SigLIP tokenizer needs it)" if "sentencepiece" in str(e).lower()
                else f"download it once with `huggingface-cli download {DEFAULT_TEXT_MODEL}` or pass a local "
                     "directory, or give precomputed embeddings (.npy/.pt)")
        raise InputError(f"{model}: SigLIP tokenizer not available offline ({str(e).splitlines()[0][:160]}); {hint}") from None
    try:
        net = SiglipTextModel.from_pretrained(model, local_files_only=True)
    except (OSError, ValueError) as e:
        raise InputError(f"{model}: SigLIP text model not available offline ({str(e).splitlines()[0][:160]}); "
                         f"download it once with `huggingface-cli download {DEFAULT_TEXT_MODEL}`, pass a local "
                         "directory, or give precomputed embeddings (.npy/.pt)") from None
    return tok, net.to(device).eval()


@torch.no_grad()
def _encode(names: Sequence[str], model: str, template: str, device: str, batch: int = 64) -> Tensor:
    tok, net = _text_model(model, device)
    max_len = getattr(tok, "model_max_length", 64)
    max_len = 64 if not isinstance(max_len, int) or max_len > 10_000 else max_len
    out = []
    for s in range(0, len(names), batch):
        prompts = [template.format(n) for n in names[s:s + batch]]
        ids = tok(prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
        emb = net(input_ids=ids["input_ids"].to(device)).pooler_output.float()
        out.append(emb.cpu())
    emb = torch.cat(out)
    return emb / emb.norm(dim=-1, keepdim=True)


def encode_classes(class_names: Sequence[str], model: str = DEFAULT_TEXT_MODEL, *, template: str = TEMPLATE,
                   cache_dir: str | os.PathLike | None = None, embeddings: str | os.PathLike | None = None,
                   device: str = "cpu") -> Tensor:
    """[C, E] L2-normalised embeddings of `class_names` (in that order).

    embeddings: a precomputed .npy/.pt file for exactly these classes (skips the text model).
    Otherwise the on-disk cache (`cache_dir`, default ~/.cache/panoptic-splat/text-embeddings) is used,
    and filled on a miss.
    """
    names = [str(n) for n in class_names]
    if not names:
        raise ValueError("empty class list: give at least one class name")
    if embeddings is not None:
        return load_embeddings(embeddings, names)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    f = cache / f"{_cache_key(model, template, names)}.pt"
    if f.is_file():
        try:
            return load_embeddings(f, names)
        except InputError:
            pass  # stale or damaged cache entry: recompute
    emb = _encode(names, model, template, device)
    save_embeddings(f, emb, names, model=model, template=template)
    return emb


def save_embeddings(path: str | os.PathLike, emb: Tensor, class_names: Sequence[str], **meta) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"embeddings": emb.detach().float().cpu(), "class_names": list(class_names), **meta}, tmp)
    return path


def load_embeddings(path: str | os.PathLike, class_names: Optional[Sequence[str]] = None) -> Tensor:
    """A .npy ([C, E]) or .pt (tensor, or {'embeddings', 'class_names'}) file -> float32 [C, E].

    With `class_names`, the row count (and the stored names, if any) must match.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: embedding file not found")
    try:
        if path.suffix == ".npy":
            obj, stored = np.load(path, allow_pickle=False), None
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            stored = None
            if isinstance(obj, dict):
                stored = obj.get("class_names")
                obj = obj.get("embeddings")
    except Exception as e:
        raise InputError(f"{path}: cannot read text embeddings ({type(e).__name__}); expected a .npy array or a "
                         f".pt tensor / {{'embeddings', 'class_names'}} dict") from None
    emb = torch.as_tensor(np.asarray(obj) if not isinstance(obj, Tensor) else obj)
    if emb.ndim != 2 or not emb.is_floating_point():
        raise InputError(f"{path}: text embeddings must be a float [C, E] array, got {tuple(emb.shape)} {emb.dtype}")
    if class_names is not None:
        if emb.shape[0] != len(class_names):
            raise InputError(f"{path}: {emb.shape[0]} embeddings for {len(class_names)} classes; regenerate the file "
                             f"for this class list")
        if stored is not None and list(stored) != list(class_names):
            raise InputError(f"{path}: embeddings were made for another class list ({list(stored)[:3]}...)")
    return emb.float()


# ------------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _vocab(name: str) -> dict:
    return json.loads((VOCAB_DIR / name).read_text())


def panlift_vocabulary() -> tuple[list[str], list[int]]:
    """Prompts for the 21 PanLift classes and their ids (1..21), from vocab/panlift.json."""
    v = _vocab("panlift.json")
    return [c["prompt"] for c in v["classes"]], [int(c["id"]) for c in v["classes"]]


def map_to_panlift(class_names: Sequence[str], *, unknown: Optional[int] = None) -> list[int]:
    """Model class names -> PanLift ids via vocab/name_to_panlift.json (PanLift names, their prompts and
    ScanNet++-style names). Unknown names map to `unknown` (default: the PanLift 'other' class)."""
    table = {k.lower(): int(v) for k, v in _vocab("name_to_panlift.json")["map"].items()}
    for c in _vocab("panlift.json")["classes"]:
        table.setdefault(c["name"].lower(), int(c["id"]))
        table.setdefault(c["prompt"].lower(), int(c["id"]))
    fallback = int(_vocab("panlift.json")["other_id"]) if unknown is None else int(unknown)
    return [table.get(str(n).strip().lower(), fallback) for n in class_names]
