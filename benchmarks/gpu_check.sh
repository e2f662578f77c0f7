#!/usr/bin/env bash
# One-command GPU check (issue 17): prints one JSON object (see benchmarks/gpu_check.py for what it measures).
#
#   benchmarks/gpu_check.sh                   # on the GPU machine, from the repository root; < 8 minutes
#   benchmarks/gpu_check.sh --smoke           # tiny sizes, any machine
#   benchmarks/gpu_check.sh --download-wheels # HERE (with internet): fetch the wheels the GPU image lacks into .whl/
#
# The project's GPU machines have torch, torchvision, timm, pandas, h5py (older tifffile) but not
# tiffslide, imagecodecs, zarr or anndata, and cannot reach PyPI. Run `--download-wheels` here once, then on
# the device: run(command="benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540). When .whl/ exists the
# script installs those wheels into /tmp/site first (no index, no dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(tiffslide==3.0.1 imagecodecs==2026.3.6 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1
        google-crc32c==1.9.0 anndata==0.12.19 array-api-compat==1.16.0 legacy-api-wrap==1.5 natsort==8.4.0
        tifffile==2026.3.3 scverse-misc==0.0.3)

if [[ "${1:-}" == "--download-wheels" ]]; then
    grep -qx '/.whl/' .gitignore 2>/dev/null || echo "note: add /.whl/ to .gitignore or .git/info/exclude" >&2
    PIP="${PYTHON:-python3} -m pip"
    mkdir -p .whl
    for w in "${WHEELS[@]}"; do
        $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$w" \
            || $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
                --platform any -d .whl "$w"
    done
    ls -la .whl
    exit 0
fi

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    for c in .venv/bin/python python3 python; do
        if command -v "$c" >/dev/null 2>&1 && "$c" -c "import torch" 2>/dev/null; then PY="$c"; break; fi
    done
fi
[[ -n "$PY" ]] || { echo '{"error": "no python with torch found (set PYTHON=...)"}'; exit 2; }

if [[ -d .whl ]] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

missing=$("$PY" - <<'EOF'
import importlib
need = ["torch", "torchvision", "timm", "tifffile", "tiffslide", "imagecodecs", "zarr", "anndata", "pandas", "numpy"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
EOF
)
if [[ -n "$missing" ]]; then
    echo "{\"error\": \"missing python packages: $missing (run benchmarks/gpu_check.sh --download-wheels where pip works, carry .whl)\"}"
    exit 2
fi

# the whole check stays under 8 minutes: 470 s here, the machine's start and the transfers on top
exec timeout "${GPU_CHECK_TIMEOUT:-470}" "$PY" benchmarks/gpu_check.py "$@"
