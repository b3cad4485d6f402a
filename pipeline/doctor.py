"""`python -m pipeline doctor`: what this machine can run, and what is missing for each stage.

Only inspects: it never triggers gsplat's JIT build (it looks for the prebuilt `gsplat.csrc` module or an
already-built `gsplat_cuda` library in torch's extension cache) and never downloads weights (it looks for
SigLIP snapshots in the local Hugging Face cache).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Check", "environment_checks", "stage_checks", "hf_cache_models", "gsplat_extension", "doctor_command"]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def hf_cache_dirs() -> list[Path]:
    dirs = []
    for env in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(env):
            dirs.append(Path(os.environ[env]))
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    dirs += [home / "hub", Path(os.environ.get("TRANSFORMERS_CACHE", home / "transformers"))]
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def hf_cache_models(keyword: str) -> list[str]:
    """Model repos in the local HF cache whose name contains `keyword` and that hold a snapshot with weights."""
    found = []
    for d in hf_cache_dirs():
        for repo in sorted(d.glob("models--*")):
            if keyword.lower() not in repo.name.lower():
                continue
            weights = [p for p in repo.glob("snapshots/*/*") if p.suffix in (".safetensors", ".bin")]
            if weights:
                found.append(repo.name[len("models--"):].replace("--", "/"))
    return found


def gsplat_extension() -> Check:
    """Is gsplat's CUDA extension built (prebuilt wheel or JIT cache) and loadable? Never compiles."""
    if importlib.util.find_spec("gsplat") is None:
        return Check("gsplat CUDA ext", False, "gsplat not installed (pip install gsplat==1.5.3)")
    try:
        prebuilt = importlib.util.find_spec("gsplat.csrc")
    except (ImportError, ValueError):
        prebuilt = None
    if prebuilt is not None:
        try:
            importlib.import_module("gsplat.csrc")
            return Check("gsplat CUDA ext", True, f"prebuilt, loadable ({prebuilt.origin})")
        except Exception as e:
            return Check("gsplat CUDA ext", False, f"prebuilt but not loadable: {type(e).__name__}: {e}")
    try:
        from torch.utils.cpp_extension import _get_build_directory

        build = Path(_get_build_directory("gsplat_cuda", verbose=False))
    except Exception:  # private torch helper: tolerate its absence
        build = None
    so = build / "gsplat_cuda.so" if build is not None else None
    if so is not None and so.is_file():
        try:
            spec = importlib.util.spec_from_file_location("gsplat_cuda", so)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return Check("gsplat CUDA ext", True, f"JIT-built, loadable ({so})")
        except Exception as e:
            return Check("gsplat CUDA ext", False, f"JIT-built at {so} but not loadable: {type(e).__name__}: {e}")
    return Check("gsplat CUDA ext", False, "not built (first CUDA use JIT-compiles it, needs nvcc; "
                                           "the CPU path uses the torch reference rasteriser instead)")


def environment_checks() -> tuple[list[Check], dict]:
    import torch

    checks, facts = [], {}
    checks.append(Check("torch", True, f"{torch.__version__}, {torch.get_num_threads()} CPU threads"))
    cuda = torch.cuda.is_available()
    facts["cuda"] = cuda
    if cuda:
        dev = torch.cuda.get_device_properties(0)
        checks.append(Check("CUDA", True, f"{torch.cuda.get_device_name(0)}, {dev.total_memory / 2**30:.0f} GiB, "
                                          f"torch CUDA {torch.version.cuda}"))
    else:
        checks.append(Check("CUDA", False, "no CUDA device visible to torch (CPU mode)"))
    gv = _version("gsplat")
    if gv is None:
        checks.append(Check("gsplat", False, "not installed"))
    else:
        try:
            importlib.import_module("gsplat")
            checks.append(Check("gsplat", True, f"{gv}, imports"))
        except Exception as e:
            checks.append(Check("gsplat", False, f"{gv}, import fails: {type(e).__name__}: {e}"))
    ext = gsplat_extension()
    facts["gsplat_ext"] = ext.ok
    checks.append(ext)
    tv = _version("transformers")
    checks.append(Check("transformers", tv is not None, tv or "not installed"))
    facts["transformers"] = tv is not None
    # DINOv2's weights travel inside the PanSt3R checkpoint; only the SigLIP text tower comes from the HF cache
    # (or a local path / a precomputed class-embedding file).
    models = hf_cache_models("siglip")
    facts["siglip"] = bool(models)
    checks.append(Check("SigLIP text weights", bool(models), ", ".join(models) if models else
                        f"not in the local HF cache ({', '.join(map(str, hf_cache_dirs())) or 'no cache dir'}); "
                        "give --segment.text-embeddings FILE or a local SigLIP path instead"))
    for mod, label in (("viser", "viser (viewer)"), ("matplotlib", "matplotlib (report plots)")):
        ok = importlib.util.find_spec(mod) is not None
        facts[mod] = ok
        checks.append(Check(label, ok, _version(mod) or "not installed"))
    return checks, facts


def _package(mod: str) -> str | None:
    """None when `mod` imports, else why not."""
    try:
        importlib.import_module(mod)
        return None
    except Exception as e:
        return f"{mod} does not import ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def stage_checks(facts: dict) -> list[Check]:
    """For each stage, what is missing to run it here (empty = ready)."""
    out = []

    def add(name, missing, note=""):
        missing = [m for m in missing if m]
        detail = ("missing: " + "; ".join(missing)) if missing else "ready"
        out.append(Check(name, not missing, detail + (f" ({note})" if note else "")))

    add("segment (simulated / precomputed)", [_package("pipeline.stages")])
    panst3r_missing = [_package("panst3r.segment"),
                       None if facts.get("transformers") else "transformers",
                       None if facts.get("siglip") else "class text embeddings (SigLIP is not in the local HF "
                       "cache: pass --segment.text-embeddings FILE or a SigLIP folder)"]
    ckpt_note = "also needs a PanSt3R checkpoint (--segment.checkpoint PATH; DINOv2 weights are inside it)"
    add("segment (panst3r)", panst3r_missing, ckpt_note)
    render_missing = [_package("splat.render")]
    if facts.get("cuda") and not facts.get("gsplat_ext"):
        render_missing.append("gsplat CUDA extension (will JIT-build on first use; or use --device cpu)")
    add("splat", [_package("splat.train")] + render_missing)
    add("uplift", [_package("uplift.ludvig")] + render_missing)
    add("render", [_package("uplift.render")] + render_missing)
    add("evaluate", [_package("pipeline.metrics")])
    add("render_then_segment", panst3r_missing + render_missing, ckpt_note)
    add("report", [_package("pipeline.report"), None if facts.get("matplotlib") else "matplotlib"])
    add("view", [None if facts.get("viser") else "viser"])
    return out


def doctor_command() -> list[Check]:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    env, facts = environment_checks()
    stages = stage_checks(facts)
    for title, rows, head in (("environment", env, "component"), ("stages", stages, "stage")):
        t = Table(title=title)
        t.add_column(head)
        t.add_column("ok")
        t.add_column("detail")
        for c in rows:
            t.add_row(c.name, "[green]yes[/green]" if c.ok else "[red]no[/red]", c.detail)
        console.print(t)
    return env + stages
