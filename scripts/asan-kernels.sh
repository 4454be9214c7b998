#!/usr/bin/env bash
# The kernel tests under AddressSanitizer (nightly; Miri is not installable here, and Miri could
# not run the SIMD paths anyway). Each test runs once per instruction-set level kiln can choose:
# the level this CPU supports, then KILN_ISA=avx2 and KILN_ISA=baseline (portable code).
# Debug build (kiln-kernels itself unoptimised, so the runs take seconds per level).
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="-Zsanitizer=address" RUSTDOCFLAGS="-Zsanitizer=address"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/asan}"
# --target keeps the sanitizer off build scripts and proc macros.
args=(+nightly test -p kiln-kernels --lib --target x86_64-unknown-linux-gnu)
for isa in "" avx2 baseline; do
  echo "== KILN_ISA=${isa:-<native>}"
  KILN_ISA=$isa cargo "${args[@]}"
done
