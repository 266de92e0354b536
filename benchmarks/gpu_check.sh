#!/usr/bin/env bash
# One-shot GPU check (issue #15), from the repository root of a CUDA machine with Python 3.10+ and pip:
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# Installs the project and what it can of the GPU extras, then runs benchmarks/gpu_check.py (one 400 px pad-synth
# class, omnipose-ad's GPU preset with the vm and the hash field, ns-eval metrics, pose error, timings).
# Sized for 8 minutes on one GPU once the packages are installed.
set -euo pipefail
out=${1:-/tmp/pad-gpu-check}
started=$(date +%s)

if ! nvidia-smi -L; then
  echo "gpu_check: no NVIDIA GPU visible; this check needs one." >&2
  exit 2
fi

python -m pip install -q -e .

# faiss on the GPU: the CUDA 12 wheel where the index can be reached; the retrieval index moves to the GPU by
# itself when faiss has GPU support (pose/retrieval.py).
if python -c "import faiss, sys; sys.exit(0 if hasattr(faiss, 'StandardGpuResources') else 1)" 2>/dev/null; then
  echo "gpu_check: faiss already has GPU support"
elif python -m pip install -q faiss-gpu-cu12; then
  python -m pip uninstall -q -y faiss-cpu || true  # both install the `faiss` module; keep the GPU one
  python -m pip install -q --force-reinstall --no-deps faiss-gpu-cu12
else
  echo "gpu_check: no faiss-gpu wheel could be installed; retrieval stays on faiss-cpu"
fi

# tiny-cuda-nn has no prebuilt wheel: it is built from its source with nvcc, which takes 5-10 minutes and needs the
# source at hand. Build it only from a local checkout (TCNN_SOURCE=/path/to/tiny-cuda-nn); otherwise the hash field
# runs nerfstudio's torch hash grid on CUDA and the table says so.
if python -c "import tinycudann" 2>/dev/null; then
  echo "gpu_check: tinycudann installed"
elif [[ -n "${TCNN_SOURCE:-}" && -d "${TCNN_SOURCE}/bindings/torch" ]] && command -v nvcc >/dev/null; then
  python -m pip install -q --no-build-isolation "${TCNN_SOURCE}/bindings/torch"
else
  echo "gpu_check: tinycudann is not installed and cannot be built here (set TCNN_SOURCE to a tiny-cuda-nn checkout" \
    "and have nvcc on PATH); the hash field uses nerfstudio's torch hash grid on CUDA"
fi
echo "gpu_check: set-up took $(( $(date +%s) - started )) s"

PYTHONUNBUFFERED=1 python benchmarks/gpu_check.py --out "$out"
echo "gpu_check: finished in $(( $(date +%s) - started )) s"
