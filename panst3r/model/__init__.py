"""The PanSt3R network (inference only): MUSt3R encoder/decoder, DINOv2, panoptic decoder."""

from .config import PanSt3RConfig, full_config, tiny_config
from .panst3r import EncodedViews, PanSt3R, PanSt3ROutput

__all__ = ["PanSt3R", "PanSt3ROutput", "EncodedViews", "PanSt3RConfig", "full_config", "tiny_config"]
