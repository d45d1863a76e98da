"""A whole run as a user starts it, against the script the user would write instead.

    pip install -e '.[bench]'
    python benchmarks/end_to_end.py [--images 96] [--rounds 3]

The job: predict every image of a folder of JPEGs (256-384 x 320-480 px, written by this script from a
seed) with a random-initialised resnet18 and draw a Grad-CAM overlay of the predicted class for each. The
peer is `benchmarks/peer_gradcam.py` (pytorch-grad-cam, batched, the same preprocessing and threads). Each
command runs in a process of its own, as a user runs it, start-up included; the variants take turns
(interleaved rounds), and the table gives the median wall time and its ratio to the peer's in the same run.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
CNNVIS = shutil.which("cnnvis") or str(Path(sys.executable).parent / "cnnvis")
RUN = ["run", "model=resnet18", "model.weights=null", "dataset=imagefolder", "selection.criteria=[all]",
       "selection.max_samples=null", "targets=[pred]", "technique=gradcam", "cache=null", "progress=false"]


def write_images(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for index in range(count):
        height, width = int(rng.integers(256, 385)), int(rng.integers(320, 481))
        pixels = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)  # blotches, as photos have
        image = Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR)
        image.save(folder / f"img_{index:04d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnvis-e2e-"))
    images = work / "images"
    images.mkdir()
    write_images(images, args.images)
    variants = {
        "script (pytorch-grad-cam)": lambda out: [sys.executable, str(HERE / "peer_gradcam.py"), str(images), str(out)],
        "cnnvis, defaults": lambda out: [CNNVIS, *RUN, f"dataset.root={images}", f"hydra.run.dir={out}"],
        "cnnvis, no panels or report": lambda out: [CNNVIS, *RUN, f"dataset.root={images}", f"hydra.run.dir={out}",
                                                    "render.panels=false", "report=false"],
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for round_number in range(args.rounds):
        names = list(variants)
        names = names[round_number % len(names):] + names[:round_number % len(names)]
        for name in names:
            out = work / f"out-{round_number}-{list(variants).index(name)}"
            start = time.perf_counter()
            subprocess.run(variants[name](out), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            seconds[name].append(time.perf_counter() - start)
            shutil.rmtree(out)
    peer = statistics.median(seconds["script (pytorch-grad-cam)"])
    print(f"{args.images} JPEGs, random resnet18, Grad-CAM of the prediction of each image, median of "
          f"{args.rounds} interleaved rounds\n")
    print("| command | wall time (s) | x the script |")
    print("|---|---|---|")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {median / peer:.2f} |")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
