#!/usr/bin/env bash
# Source on a lent GPU machine (no internet), from the repository root, with .whl carried:
#   . bench/device_setup.sh
# Installs the carried gsplat wheel (and any carried wheel under .whl/*/ whose module the image lacks) into /tmp/site,
# puts it and the repository on PYTHONPATH and builds gsplat's CUDA extension once (about 60 s on H100).
# Fetch the wheels beforehand on a machine with the package registries (see bench/RESULTS.md, "Device setup").
set -e
# a gsplat CUDA build carried from an earlier machine (.whl/gsplat_ext.tgz) saves the build
ext=$(python3 -c "import torch.utils.cpp_extension as c; print(c.get_default_build_root())" 2>/dev/null)
if [ -f .whl/gsplat_ext.tgz ] && [ ! -d "$ext/gsplat_cuda" ]; then mkdir -p "$ext" && tar xzf .whl/gsplat_ext.tgz -C "$ext" && echo "gsplat build carried in"; fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/splat/*.whl
missing=()
for pair in skimage:scikit_image zarr:zarr numcodecs:numcodecs donfig:donfig rich:rich markdown_it:markdown_it_py \
            mdurl:mdurl pygments:pygments filelock:filelock fsspec:fsspec lazy_loader:lazy_loader tifffile:tifffile \
            imageio:imageio networkx:networkx yaml:pyyaml crc32c:crc32c PIL:pillow pytest:pytest pluggy:pluggy \
            iniconfig:iniconfig; do
  mod=${pair%%:*}; whl=${pair##*:}
  python3 -c "import $mod" 2>/dev/null && continue
  found=$(ls .whl/*/${whl}-*.whl 2>/dev/null | head -1)  # any carried folder: extra, or a smaller set of it
  [ -n "$found" ] && missing+=("$found") || echo "device_setup: no carried wheel for $mod ($whl)"
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "device_setup: installing ${missing[*]}"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "${missing[@]}"
fi
export PYTHONPATH=/tmp/site:$PWD TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
t0=$(date +%s)
python3 -c "import gsplat, torch; from gsplat.cuda._backend import _C; assert _C is not None" >/tmp/gsplat_build.log 2>&1 \
  || { tail -20 /tmp/gsplat_build.log; exit 1; }
echo "device_setup: gsplat ready in $(( $(date +%s) - t0 )) s; $(python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())')"
set +e
