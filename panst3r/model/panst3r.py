"""The PanSt3R network and its multi-view inference flow.

Flow of `PanSt3R.infer` for V views and keyframes K (keyframes[0] = reference / world frame):
1. MUSt3R encoder and DINOv2 on every view (independent per view, cacheable: `encode`).
2. Memory from the keyframes in batches [2, 1, 1, ...] (views reordered as [keyframes..., others...]).
3. Each keyframe rendered against the full memory -> pointmap + last decoder features; fused
   [enc | dec | dino] tokens -> (mixer) -> upscaler; one mask-transformer pass over all keyframes jointly.
4. Each non-keyframe rendered the same way; its masks come from the fixed keyframe queries through the
   prediction heads only (its class logits are discarded), which keeps instance ids consistent.
Outputs are returned in the caller's view order; masks stay at H/2 x W/2 per view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from pipeline.common.progress import progress_bar

from .config import PanSt3RConfig
from .decoder import MUSt3RDecoder
from .dino import DinoEncoder
from .encoder import MUSt3REncoder
from .fusion import fuse_features
from .heads import postprocess_pointmap
from .mask_transformer import MaskTransformer, PanopticDecoder
from .mixer import InputMixer
from .upscalers import LoftUpUpscaler, PixelShuffleUpscaler

__all__ = ["PanSt3R", "PanSt3ROutput", "EncodedViews"]


@dataclass
class PanSt3ROutput:
    pts3d: Tensor  # [V, H, W, 3] float32, in the camera frame of keyframes[0]
    pts3d_local: Tensor  # [V, H, W, 3] float32, each view's camera frame
    conf: Tensor  # [V, H, W] float32, 1 + exp(.)
    pred_logits: Tensor  # [Q, C] class logits from the keyframe pass
    pred_masks: list  # V x [Q, H/2, W/2] float32 mask logits, input order
    out_queries: Tensor  # [Q, D] final keyframe queries
    keyframes: list  # input-order indices used as keyframes
    true_shape: tuple  # (H, W)


@dataclass
class EncodedViews:
    """Per-view features that do not depend on the keyframe choice (reusable across `infer` calls)."""

    x_enc: Tensor  # [V, N, enc_dim]
    pos: Tensor  # [N, 2] (row, col)
    x_dino: Tensor  # [V, N, dino_dim]
    renders: dict = field(default_factory=dict, repr=False)
    """MUSt3R renders (raw pointmap, decoder tokens) keyed by (backbone, keyframes, view): a second `infer`
    with the same keyframes on a model sharing this MUSt3R backbone (e.g. v1 and v2) skips the decoder."""


class PanSt3R(nn.Module):
    def __init__(self, config: PanSt3RConfig):
        super().__init__()
        cfg = config.check()
        self.config = cfg
        self.variant = cfg.variant
        self.must3r_encoder = MUSt3REncoder(cfg.patch_size, cfg.enc_dim, cfg.enc_depth, cfg.enc_heads)
        self.must3r_decoder = MUSt3RDecoder(cfg.enc_dim, cfg.dec_dim, cfg.dec_depth, cfg.dec_heads, cfg.patch_size)
        self.dino_encoder = DinoEncoder(cfg.dino_dim, cfg.dino_depth, cfg.dino_heads, cfg.dino_patch,
                                        cfg.dino_image_size, grid_patch=cfg.patch_size)
        mt = MaskTransformer(cfg.hidden_dim, cfg.mask_dim, cfg.num_queries, cfg.mt_heads, cfg.mt_layers, cfg.ff_dim,
                             cfg.text_dim)
        if cfg.variant == "v1":
            up = PixelShuffleUpscaler(cfg.fused_dim, cfg.fp_dims, cfg.upscale_hidden_factor)
            mixer = None
        else:
            mixer = InputMixer(cfg.fused_dim, cfg.hidden_dim, cfg.mixer_heads, cfg.mixer_layers, cfg.mixer_ff_mult)
            up = LoftUpUpscaler(cfg.hidden_dim, cfg.mask_dim, 2, cfg.loftup_heads, cfg.loftup_layers,
                                cfg.loftup_freqs, cfg.loftup_lr_freqs)
        self.panoptic_decoder = PanopticDecoder(up, mt, mixer)

    @property
    def text_dim(self) -> int:
        return self.config.text_dim

    @property
    def device(self) -> torch.device:
        return self.must3r_decoder.image2_embed.device

    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: Tensor, *, max_bs: int = 1, progress: bool = False) -> EncodedViews:
        """MUSt3R encoder + DINOv2 tokens of every view. images: [V, 3, H, W] in [-1, 1]."""
        self._check_images(images)
        dev = self.device
        enc, dino, pos = [], [], None
        bar = progress_bar(images.shape[0], "PanSt3R encode", unit="view", enabled=progress)
        for s in range(0, images.shape[0], max_bs):
            img = images[s:s + max_bs].to(dev, torch.float32)
            x, p = self.must3r_encoder(img)
            enc.append(x)
            dino.append(self.dino_encoder(img))
            pos = p[0]
            bar.update(img.shape[0])
        bar.close()
        return EncodedViews(torch.cat(enc), pos, torch.cat(dino))

    def _check_images(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [V, 3, H, W], got {tuple(images.shape)}")
        p = self.config.patch_size
        if images.shape[2] % p or images.shape[3] % p:
            raise ValueError(f"image size {tuple(images.shape[2:])} must be a multiple of {p} (use panst3r.preprocess)")

    @torch.no_grad()
    def build_memory(self, x_enc: Tensor, pos: Tensor) -> list:
        """Memory of the keyframes x_enc [K, N, C] (first = reference) in batches [2, 1, 1, ...]."""
        dec = self.must3r_decoder
        if x_enc.shape[0] == 1:  # the official demo duplicates a single image into a pair
            x_enc = x_enc.expand(2, -1, -1)
        pos_b = pos[None]
        mem = dec.update_memory(x_enc[:2], pos_b.expand(2, -1, -1), None)
        for k in range(2, x_enc.shape[0]):
            mem = dec.update_memory(x_enc[k:k + 1], pos_b, mem)
        return mem

    def _backbone_key(self) -> tuple:
        dec = self.must3r_decoder
        return (dec.image2_embed.data_ptr(), dec.head_dec.proj.weight.data_ptr(),
                self.must3r_encoder.norm_enc.weight.data_ptr())

    @torch.no_grad()
    def _render_views(self, idx: Sequence[int], images: Tensor, enc: EncodedViews, memory, renders: dict,
                      kf_key: tuple, max_bs: int, bar):
        """Views `idx` -> (raw pointmaps [n, H, W, 7] on CPU, fpn list, mask-feature list).

        memory(): the keyframe memory (built on first use); renders: cache of (raw, y_dec) per view.
        """
        dev = self.device
        H, W = images.shape[-2:]
        p = self.config.patch_size
        hw = (H // p, W // p)
        todo = [v for v in idx if (kf_key, v) not in renders]
        for s in range(0, len(todo), max_bs):
            sel = todo[s:s + max_bs]
            pos = enc.pos.to(dev)[None].expand(len(sel), -1, -1)
            raw, y_dec = self.must3r_decoder.render(enc.x_enc[sel].to(dev), pos, memory(), (H, W))
            for j, v in enumerate(sel):
                renders[(kf_key, v)] = (raw[j].cpu(), y_dec[j])
        raws, fpns, mfs = [], [], []
        for s in range(0, len(idx), max_bs):
            sel = list(idx[s:s + max_bs])
            x_enc = enc.x_enc[sel].to(dev)
            pos = enc.pos.to(dev)[None].expand(len(sel), -1, -1)
            y_dec = torch.stack([renders[(kf_key, v)][1] for v in sel]).to(dev)
            fused = fuse_features(x_enc, y_dec, enc.x_dino[sel].to(dev))
            fpn, mf = self.panoptic_decoder.features(fused, pos, images[sel].to(dev, torch.float32), hw)
            raws.append(torch.stack([renders[(kf_key, v)][0] for v in sel]))
            fpns.extend(fpn.unbind(0))
            mfs.extend(mf.unbind(0))
            bar.update(len(sel))
        return torch.cat(raws), fpns, mfs

    @torch.no_grad()
    def infer(self, images: Tensor, keyframes: Sequence[int], text_embeddings: Tensor, *, max_bs: int = 1,
              progress: bool = False, encoded: Optional[EncodedViews] = None) -> PanSt3ROutput:
        """Multi-view inference; see the module docstring. `encoded` may come from `encode(images)`."""
        self._check_images(images)
        V, _, H, W = images.shape
        kf = [int(k) for k in keyframes]
        if not kf or len(set(kf)) != len(kf) or min(kf) < 0 or max(kf) >= V:
            raise ValueError(f"keyframes must be distinct view indices in [0, {V}), got {list(keyframes)}")
        if text_embeddings.ndim != 2 or text_embeddings.shape[1] != self.config.text_dim:
            raise ValueError(f"text_embeddings must be [C, {self.config.text_dim}], got {tuple(text_embeddings.shape)}")
        max_bs = max(1, int(max_bs))
        others = [i for i in range(V) if i not in set(kf)]
        enc = encoded if encoded is not None else self.encode(images, max_bs=max_bs, progress=progress)
        dev = self.device
        text = text_embeddings.to(dev, torch.float32)
        mt = self.panoptic_decoder.mask_transformer

        held: list = []

        def memory():
            if not held:
                mem = self.build_memory(enc.x_enc[kf].to(dev), enc.pos.to(dev))
                nbytes = sum(m.numel() * m.element_size() for m in mem)
                # projected keys/values are reused by every render; skip that when they would be large
                held.append(self.must3r_decoder.prepare_memory(mem) if nbytes <= (1 << 30) else mem)
            return held[0]

        renders = enc.renders if encoded is not None else {}
        kf_key = (self._backbone_key(), tuple(kf))
        bar = progress_bar(V, "PanSt3R decode", unit="view", enabled=progress)
        raw_kf, fpn_kf, mf_kf = self._render_views(kf, images, enc, memory, renders, kf_key, max_bs, bar)
        logits, masks_kf, out_q = mt(fpn_kf, mf_kf, text)
        del fpn_kf, mf_kf
        raw = torch.empty((V, H, W, raw_kf.shape[-1]), dtype=torch.float32)
        masks: list = [None] * V
        raw[kf] = raw_kf
        for k, m in zip(kf, masks_kf):
            masks[k] = m.cpu()
        for s in range(0, len(others), max_bs):
            sel = others[s:s + max_bs]
            r, _, mfs = self._render_views(sel, images, enc, memory, renders, kf_key, max_bs, bar)
            raw[sel] = r
            _, ms = mt.prediction_heads(out_q, mfs, None)
            for k, m in zip(sel, ms):
                masks[k] = m.cpu()
        bar.close()
        held.clear()
        pts3d, pts3d_local, conf = postprocess_pointmap(raw)
        return PanSt3ROutput(pts3d=pts3d, pts3d_local=pts3d_local, conf=conf, pred_logits=logits.cpu(),
                             pred_masks=masks, out_queries=out_q.cpu(), keyframes=kf, true_shape=(int(H), int(W)))
