#!/usr/bin/env bash
# Installs the CUDA 13.0 compiler toolchain (nvcc, cicc, headers) and, with --runtime, the
# runtime libraries (cuBLAS, cuRAND, NVRTC, cudart) from PyPI into a venv under
# target/cuda-toolkit/, with no GPU, driver or system CUDA needed. Idempotent: a second run
# with the same versions installs nothing.
#
# Why 13.0.x: the NVIDIA machines kiln is checked on run driver 580 (CUDA 13.0); PTX emitted by
# a newer nvcc would not load there.
#
# Prints the exports to use and writes them to target/cuda-toolkit/env.sh:
#   source target/cuda-toolkit/env.sh && cargo clippy --release --features cuda -- -D warnings
#
# Usage: scripts/cuda-toolkit.sh [--runtime] [--quiet]
#   CUDA_COMPUTE_CAP (default 80) is the compute capability candle's kernels are compiled for
#   when no GPU can be queried; PYTHON (default python3) makes the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD/target/cuda-toolkit"
runtime=0
quiet=0
for a in "$@"; do
    case "$a" in
        --runtime) runtime=1 ;;
        --quiet) quiet=1 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "cuda-toolkit.sh: unknown argument '$a' (expected --runtime, --quiet)" >&2; exit 2 ;;
    esac
done

# One CUDA release: 13.0 update 2 (driver >= 580). cuRAND and cuBLAS number their own versions.
toolkit=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96
         nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85)
libs=(nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88)
want=("${toolkit[@]}")
if [ "$runtime" = 1 ]; then want+=("${libs[@]}"); fi

py="${PYTHON:-python3}"
if [ ! -x "$root/venv/bin/python" ]; then
    "$py" -m venv "$root/venv"
fi
stamp="$root/installed.txt"
have="$(cat "$stamp" 2>/dev/null || true)"
missing=()
for p in "${want[@]}"; do
    grep -qxF "$p" <<<"$have" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    # --no-deps: the wheels are plain file trees; their declared dependencies would pull other
    # CUDA versions in.
    "$root/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "${missing[@]}"
    printf '%s\n' "${missing[@]}" >>"$stamp"
fi

cu="$("$root/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu13"
if [ ! -x "$cu/bin/nvcc" ]; then
    echo "cuda-toolkit.sh: $cu/bin/nvcc missing after install (wheel layout changed?)" >&2
    exit 1
fi
# nvcc looks for cicc in ../nvvm/bin relative to itself, which the nvvm wheel provides.
cap="${CUDA_COMPUTE_CAP:-80}"
cat >"$root/env.sh" <<ENV
export CUDA_ROOT="$cu"
export CUDA_PATH="$cu"
export PATH="$cu/bin:\$PATH"
export CUDA_COMPUTE_CAP="$cap"
ENV
if [ "$runtime" = 1 ]; then
    echo "export KILN_CUDA_LIB=\"$cu/lib\"" >>"$root/env.sh"
fi
if [ "$quiet" = 0 ]; then
    "$cu/bin/nvcc" --version | tail -2
    cat "$root/env.sh"
fi
