#!/usr/bin/env bash
# Build the wheel folder that bench/gpu_check.py needs on the GPU machine, then check it by a dry install.
#
#     bash bench/gpu_wheels.sh [DEST]        (DEST defaults to .whl, which .gitignore ignores)
#
# The GPU machine has Python 3.12, torch, numpy, scipy, opencv, rich, tqdm, imageio, matplotlib, jaxtyping,
# wadler-lindig, PyYAML, pillow, packaging, ninja and nvcc, but no package index. What the check imports and
# that machine lacks (docs/gpu.md says how this list was derived) travels as wheels for Python 3.12 on
# x86-64 Linux, installed there with `pip install --no-index --no-deps --target ...`. gsplat 1.5.3's wheel on
# PyPI is py3-none-any: Python plus its CUDA sources, which it compiles with nvcc on first import (JIT), so it
# is the source package and needs no build step here. viser (the web viewer) and transformers (PanSt3R) are
# not needed by the check and stay out.
set -euo pipefail

DEST=${1:-.whl}
PY=${PYTHON:-python3}
LIMIT_MIB=64
PKGS=(
  gsplat==1.5.3             # rasteriser; CUDA code compiled on first import
  plyfile==1.1.5            # PLY reading/writing (points3d.ply, gaussians.ply)
  pytorch-msssim==1.0.0     # SSIM term of the splat loss
  tyro==1.0.17              # the command line
  docstring-parser==0.18.0  # tyro's need
  typeguard==4.6.1          # tyro's need
  typing-extensions==4.16.0 # typeguard needs >= 4.14; carried so an older one there cannot break it
)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

mkdir -p "$DEST"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${PKGS[@]}"

# one version of each package: two stop the whole install on the device
dups=$(ls "$DEST"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z_.' 'a-z--' | sort | uniq -d)
if [ -n "$dups" ]; then echo "error: $DEST holds several versions of: $dups; delete the old ones" >&2; exit 1; fi

# dry install, exactly as on the device, into a scratch folder
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
"$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SCRATCH" "$DEST"/*.whl
for mod in gsplat/cuda/_backend.py gsplat/cuda/csrc/RasterizeToPixels3DGSFwd.cu plyfile.py pytorch_msssim tyro \
           docstring_parser typeguard typing_extensions.py; do
  [ -e "$SCRATCH/$mod" ] || { echo "error: the dry install lacks $mod" >&2; exit 1; }
done
# those that need no torch import from the scratch folder (gsplat is not imported: that would start its build)
PYTHONPATH="$SCRATCH" "$PY" -c "import plyfile, tyro, typeguard, docstring_parser, typing_extensions"

size_kib=$(du -sk "$DEST" | cut -f1)
echo "wheel folder $DEST: $((size_kib / 1024)) MiB ($size_kib KiB), limit $LIMIT_MIB MiB; dry install OK into a scratch folder"
ls "$DEST"/*.whl | xargs -n1 basename
if [ "$size_kib" -gt $((LIMIT_MIB * 1024)) ]; then echo "error: $DEST is over $LIMIT_MIB MiB" >&2; exit 1; fi
