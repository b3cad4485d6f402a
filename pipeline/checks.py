"""Never silent garbage: plausibility checks of a run whose numbers would otherwise look like a success.

Three cheap signals, each turned into a loud warning (summary, report, metrics.json "warnings"):
* the share of Gaussians the uplift labelled, and of non-void training pixels that carried a label;
* a self-check: a few train views re-rendered from the uplifted Gaussians, scored against the very masks they
  were uplifted from (pixel agreement and PQ) — labels that disagree with their own source are broken;
* the share of rendered test pixels left void because no labelled Gaussian covers them.
"""

from __future__ import annotations

import numpy as np

from .common.classes import STUFF_IDS, THING_IDS

__all__ = ["LIMITS", "self_check_scores", "uplift_warnings", "render_warnings"]

# Below (above, for void) these a run is implausible. Healthy runs on the synthetic scenes sit far from them.
LIMITS = {"labelled_gaussians": 0.5, "labelled_nonvoid_pixels": 0.7, "self_check_agreement": 0.6,
          "self_check_thing_agreement": 0.5, "self_check_pq": 0.25, "render_void_share": 0.2}


def self_check_scores(pred_inst: np.ndarray, pred_sem: np.ndarray, mask_inst: np.ndarray, mask_sem: np.ndarray
                      ) -> dict:
    """Rendered [V, H, W] ids/classes vs the masks they came from (consistent ids, classes), over non-void
    mask pixels: segment-id agreement, class agreement, and PQ (PanLift categories, stuff merged by class)."""
    from .metrics import panoptic_quality

    valid = np.asarray(mask_sem) > 0
    n = int(valid.sum())
    if n == 0:
        return {"pixels": 0, "agreement": None, "class_agreement": None, "pq": None}
    pi, ps = np.asarray(pred_inst)[valid], np.asarray(pred_sem)[valid]
    mi, ms = np.asarray(mask_inst)[valid], np.asarray(mask_sem)[valid]
    things = np.array(sorted(THING_IDS))
    pred = np.stack([ps, np.where(np.isin(ps, things), pi, 0)], 1)
    gt = np.stack([ms, np.where(np.isin(ms, things), mi, 0)], 1)
    res = panoptic_quality(pred, gt, THING_IDS, STUFF_IDS)
    fin = lambda x: None if x is None or not np.isfinite(x) else float(x)  # noqa: E731
    th = np.isin(ms, things) & (mi > 0)
    return {"pixels": n, "agreement": float(np.mean(pi == mi)), "class_agreement": float(np.mean(ps == ms)),
            "thing_agreement": float(np.mean(pi[th] == mi[th])) if th.any() else None,
            "pq": fin(res.pq), "pq_th": fin(res.pq_th)}


def uplift_warnings(labelled_gaussians: float, labelled_nonvoid_pixels: float | None, self_check: dict | None
                    ) -> list[str]:
    """One line per implausible signal of the uplift stage (empty when all is plausible)."""
    out = []
    if labelled_gaussians < LIMITS["labelled_gaussians"]:
        out.append(f"only {labelled_gaussians:.1%} of Gaussians got a label (expected >= "
                   f"{LIMITS['labelled_gaussians']:.0%}): the masks leave most of the scene unlabelled")
    if labelled_nonvoid_pixels is not None and labelled_nonvoid_pixels < LIMITS["labelled_nonvoid_pixels"]:
        out.append(f"only {labelled_nonvoid_pixels:.1%} of non-void training pixels carry a segment (expected >= "
                   f"{LIMITS['labelled_nonvoid_pixels']:.0%}): check the masks' stuff/thing convention")
    sc = self_check or {}
    if sc.get("agreement") is not None and sc["agreement"] < LIMITS["self_check_agreement"]:
        out.append(f"self-check: re-rendered train views agree with their own masks on only {sc['agreement']:.1%} of "
                   f"pixels (expected >= {LIMITS['self_check_agreement']:.0%})")
    if sc.get("thing_agreement") is not None and sc["thing_agreement"] < LIMITS["self_check_thing_agreement"]:
        out.append(f"self-check: on thing pixels the re-rendered train views agree with their own masks' ids on only "
                   f"{sc['thing_agreement']:.1%} (expected >= {LIMITS['self_check_thing_agreement']:.0%}): thing ids are "
                   "not consistent across views — per-frame masks need --segment.kind per_frame")
    if sc.get("pq") is not None and sc["pq"] < LIMITS["self_check_pq"]:
        out.append(f"self-check: PQ of re-rendered train views against their own masks is {sc['pq']:.2f} (expected >= "
                   f"{LIMITS['self_check_pq']})")
    return out


def render_warnings(void_share: float | None) -> list[str]:
    if void_share is not None and void_share > LIMITS["render_void_share"]:
        return [f"{void_share:.1%} of rendered test pixels are void (no labelled Gaussian covers them; expected <= "
                f"{LIMITS['render_void_share']:.0%})"]
    return []
