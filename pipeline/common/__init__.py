"""The bottom layer: what every package may import and what imports nothing else from the project.

`io` (InputError, atomic writes, PNG/JSON/YAML readers), `labels` (panoptic ids, palettes, overlays),
`classes` (the PanLift vocabulary and its thing/stuff split), `progress` (the one progress bar), `protocols`
(the frame/scene members `splat` reads), `threads` (torch thread count for a block). `splat/`, `uplift/` and
`panst3r/` import from here and never from the rest of `pipeline/`.
"""

__all__ = ["classes", "io", "labels", "progress", "protocols", "threads"]
