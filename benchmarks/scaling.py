"""One run over 1 and over 2 processes on this machine: wall time and scaling efficiency.

    python benchmarks/scaling.py [--images 96] [--rounds 2] [--only Grad-CAM]

Each process gets one thread (OMP_NUM_THREADS=1, render.threads=0, dataset.num_workers=0), so two processes
use two cores without sharing them. The jobs: a random resnet18 over a folder of JPEGs (written by
end_to_end.py's generator), every image explained for its prediction, with Grad-CAM and with Score-CAM
(64 channels, on a third of the images, to keep it minutes). `cnnvis run` is started as a user starts it,
start-up included; the variants take turns, and the table gives medians. Efficiency is T1 / (2 x T2): 1.0
would be perfect halving.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from end_to_end import CNNVIS, write_images  # noqa: E402

RUN = ["run", "model=resnet18", "model.weights=null", "dataset=imagefolder", "dataset.num_workers=0",
       "selection.criteria=[all]", "selection.max_samples=null", "targets=[pred]", "cache=null", "progress=false",
       "render.threads=0"]
JOBS = {
    "Grad-CAM": (1, ["technique=gradcam"]),
    "Score-CAM (64 channels)": (3, ["technique=scorecam", "technique.max_channels=64"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", choices=list(JOBS), help="one job instead of both")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnvis-scaling-"))
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    print(f"random resnet18, one thread per process, {os.cpu_count()} cores, median of {args.rounds} interleaved "
          "rounds\n")
    print("| job | images | 1 process (s) | 2 processes (s) | speed-up | efficiency |")
    print("|---|---|---|---|---|---|")
    for job, (fraction, technique) in JOBS.items():
        if args.only and job != args.only:
            continue
        images = work / f"images-{fraction}"
        images.mkdir()
        write_images(images, args.images // fraction)
        seconds: dict[int, list[float]] = {1: [], 2: []}
        for round_number in range(args.rounds):
            for devices in ((1, 2) if round_number % 2 == 0 else (2, 1)):
                out = work / f"out-{devices}"
                start = time.perf_counter()
                subprocess.run([CNNVIS, *RUN, *technique, f"dataset.root={images}", f"devices={devices}",
                                f"hydra.run.dir={out}"], check=True, env=environment, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                seconds[devices].append(time.perf_counter() - start)
                shutil.rmtree(out)
        one, two = statistics.median(seconds[1]), statistics.median(seconds[2])
        print(f"| {job} | {args.images // fraction} | {one:.1f} | {two:.1f} | {one / two:.2f}x "
              f"| {one / (2 * two):.0%} |")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
