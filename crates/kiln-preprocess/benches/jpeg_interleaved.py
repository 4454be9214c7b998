"""Times kiln's JPEG decoder against zune-jpeg (through `image`) on the 500 shared photos in
separate, interleaved processes (kiln, kiln with KILN_ISA=baseline, zune, repeated), one thread
each, and prints the medians and ranges of wall time and of CPU time per pass.

    cargo build --release -p kiln-preprocess --example jpeg_time
    python3 crates/kiln-preprocess/benches/jpeg_interleaved.py [ROUNDS]

CPU time (user + system of the child) is less disturbed than wall time when the machine is
shared with other jobs; both are reported.
"""

import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
EXE = os.path.join(ROOT, "target", "release", "examples", "jpeg_time")
PHOTOS = os.path.join(ROOT, "..", "shared", "imagenet-sample")
ENGINES = [("kiln", "kiln", {}), ("kiln-baseline", "kiln", {"KILN_ISA": "baseline"}), ("zune", "zune", {})]


def run(engine, env):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([EXE, "1", PHOTOS, engine], env={**os.environ, **env}, check=True, capture_output=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    res = {name: [] for name, _, _ in ENGINES}
    for _ in range(rounds):
        for name, engine, env in ENGINES:
            res[name].append(run(engine, env))
    med = {}
    for name, v in res.items():
        walls, cpus = [w for w, _ in v], [c for _, c in v]
        med[name] = (statistics.median(walls), statistics.median(cpus))
        print(f"{name:14} wall median {med[name][0]:.3f} s [{min(walls):.3f}, {max(walls):.3f}]"
              f"  cpu median {med[name][1]:.3f} s [{min(cpus):.3f}, {max(cpus):.3f}]")
    for name in ("kiln", "kiln-baseline"):
        print(f"{name} / zune: wall {med[name][0] / med['zune'][0]:.2f}x, cpu {med[name][1] / med['zune'][1]:.2f}x")


main()
