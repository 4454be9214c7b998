#!/usr/bin/env bash
# The GPU check: kiln on cuda:0 beside PyTorch eager on the same GPU. For a Linux machine with an
# NVIDIA GPU (driver >= 580), PyTorch with CUDA (+ torchvision, numpy, Pillow, safetensors) and a
# kiln binary built elsewhere by scripts/build-cuda-binary.sh: no Rust toolchain, no network.
# Run it from a checkout of this repository (it reads weights/ and python/).
#
#   scripts/gpu-check.sh --kiln PATH/kiln [--photos DIR] [--out DIR] [--python PY] [--quick]
#
#   --kiln     the kiln binary (built with --features cuda)
#   --photos   the 500 photos (default ../shared/imagenet-sample)
#   --out      where the JSON files and table.md go (default target/gpu-check)
#   --python   Python with torch (default python3)
#   --quick    batches 1 and 8 only, 5 timed passes (a smoke test)
#
# Steps (under 8 minutes on one GPU): kiln devices; for f32, f16, bf16: the shipped MobileNetV2
# and EfficientNet-Lite0 on the photos in kiln and in PyTorch, compared (top-1 agreement, top-1
# probability within the dtype's tolerance); MobileNetV2, ResNet-50 and EfficientNet-Lite0 timed
# at batch 1, 8, 64, 256 in both engines; then one table (OUT/table.md) with the ratios.
# Exit code: 0 all comparisons within tolerance, 1 some not, 2 usage or set-up error.
set -euo pipefail
cd "$(dirname "$0")/.."
kiln="" photos="../shared/imagenet-sample" out="target/gpu-check" py="python3" quick=0
usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --kiln|--photos|--out|--python)
            if [ $# -lt 2 ]; then echo "gpu-check.sh: $1 needs a value" >&2; exit 2; fi
            case "$1" in --kiln) kiln="$2" ;; --photos) photos="$2" ;; --out) out="$2" ;; --python) py="$2" ;; esac
            shift 2 ;;
        --quick) quick=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu-check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$kiln" ]; then echo "gpu-check.sh: --kiln PATH is required (see --help)" >&2; exit 2; fi
if [ ! -x "$kiln" ]; then echo "gpu-check.sh: --kiln $kiln: not an executable file" >&2; exit 2; fi
if [ ! -d "$photos" ]; then echo "gpu-check.sh: --photos $photos: not a directory" >&2; exit 2; fi
mkdir -p "$out"
if ! "$py" -c 'import torch, torchvision, numpy, PIL, safetensors; assert torch.cuda.is_available(), "torch.cuda.is_available() is False"' 2>"$out.pyerr"; then
    echo "gpu-check.sh: $py cannot run PyTorch on a GPU: $(tail -1 "$out.pyerr")" >&2; rm -f "$out.pyerr"; exit 2
fi
rm -f "$out.pyerr"

# kiln links libcublas/libcublasLt/libcurand/libcudart of CUDA 13: from a lib/ beside the binary,
# else PyTorch's nvidia-* wheels when they are CUDA 13 ones, else the system (LD_LIBRARY_PATH).
nvlibs="$("$py" - <<'PY'
import glob, os, sys
try:
    import nvidia
except ImportError:
    sys.exit(0)
dirs = set()
for root in nvidia.__path__:
    for f in glob.glob(os.path.join(root, "**", "lib*.so.*"), recursive=True):
        dirs.add(os.path.dirname(f))
print(":".join(sorted(dirs)))
PY
)"
# A lib/ beside the binary (scripts/build-cuda-binary.sh --with-libs) comes first.
kiln_libs="$(cd "$(dirname "$kiln")" && pwd)/lib"
export LD_LIBRARY_PATH="${kiln_libs}:${nvlibs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ! "$kiln" devices >"$out/devices.txt" 2>&1; then
    echo "gpu-check.sh: $kiln devices failed:" >&2; cat "$out/devices.txt" >&2; exit 2
fi
cat "$out/devices.txt"
grep -q '^cuda:0' "$out/devices.txt" || { echo "gpu-check.sh: kiln sees no cuda:0 (see above)" >&2; exit 2; }

if [ "$quick" = 1 ]; then batches=(1 8); iters=5; else batches=(1 8 64 256); iters=20; fi
bargs=(); for b in "${batches[@]}"; do bargs+=(--batch "$b"); done
status=0
tables=()
for dtype in f32 f16 bf16; do
    for model in mobilenet_v2 efficientnet_lite0; do
        tag="$model.$dtype"
        echo "== agreement: $tag"
        "$kiln" classify "$photos" --model "$model" --device cuda:0 --dtype "$dtype" --batch-size 64 \
            --format jsonl --top-k 5 -q >"$out/kiln.$tag.jsonl" || true
        "$py" python/gpu_check.py torch-classify --model "$model" --dtype "$dtype" --photos "$photos" \
            --out "$out/torch.$tag.json"
        "$py" python/gpu_check.py compare --kiln "$out/kiln.$tag.jsonl" --torch "$out/torch.$tag.json" \
            --model "$model" --dtype "$dtype" --out "$out/agree.$tag.json" || status=1
        tables+=(--agreement "$out/agree.$tag.json")
    done
    for model in mobilenet_v2 resnet50 efficientnet_lite0; do
        tag="$model.$dtype"
        echo "== bench: $tag"
        "$kiln" bench --model "$model" --device cuda:0 --dtype "$dtype" "${bargs[@]}" --warmup 5 \
            --iters "$iters" --format json >"$out/kiln-bench.$tag.json"
        "$py" python/gpu_check.py torch-bench --model "$model" --dtype "$dtype" "${bargs[@]}" --warmup 5 \
            --iters "$iters" --out "$out/torch-bench.$tag.json"
        tables+=(--bench "$out/kiln-bench.$tag.json" --bench "$out/torch-bench.$tag.json")
    done
done
"$py" python/gpu_check.py table "${tables[@]}" --out "$out/table.md"
echo "table: $out/table.md"
exit "$status"
