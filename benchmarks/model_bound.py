"""How model-bound a run is: the share of its wall time that the model's passes take.

    python benchmarks/model_bound.py [--rounds 3] [--device auto]

Each run is `pipeline.run` in this process (what `cnnvis run` does after start-up), with the model's
forward passes and the gradients the techniques take timed as they happen (on a GPU each timing waits for
the device, which slows the run a little). The rest of the wall time is reading and decoding images,
drawing, encoding and writing files, and the report. Two jobs: the demo with its defaults, and a random
resnet50 over a folder of 96 JPEGs with Grad-CAM for the prediction of every image. Each job runs with the
drawing in the main thread (`render.threads=0`) and beside the model (the default), in interleaved rounds;
the table gives medians.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from end_to_end import write_images  # noqa: E402

from cnnvis_cli import pipeline  # noqa: E402
from cnnvis_cli.checks import load_run_config  # noqa: E402
from cnnvis_cli.cli import compose  # noqa: E402


class ModelClock:
    """Seconds spent in the model's forward passes and in the gradients taken through it."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.device: torch.device | None = None

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def timing(self):
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds += time.perf_counter() - start

    def attach(self, module: torch.nn.Module) -> None:
        starts: list[float] = []

        def before(*_):
            self._sync()
            starts.append(time.perf_counter())

        def after(*_):
            self._sync()
            self.seconds += time.perf_counter() - starts.pop()

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)
        self.device = next(module.parameters()).device


@contextmanager
def clocked(clock: ModelClock):
    """Time every model `pipeline.run` loads, and every `torch.autograd.grad` call."""
    load, grad = pipeline.load_model, torch.autograd.grad

    def load_timed(cfg):
        loaded = load(cfg)
        clock.attach(loaded.module)
        return loaded

    def grad_timed(*args, **kwargs):
        with clock.timing():
            return grad(*args, **kwargs)

    pipeline.load_model, torch.autograd.grad = load_timed, grad_timed
    try:
        yield
    finally:
        pipeline.load_model, torch.autograd.grad = load, grad


def run_once(overrides: list[str], folder: Path) -> tuple[float, float]:
    cfg = load_run_config(compose(["progress=false", "cache=null", *overrides]))
    clock = ModelClock()
    with clocked(clock):
        start = time.perf_counter()
        pipeline.run(cfg, folder)
        wall = time.perf_counter() - start
    return wall, clock.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--defaults-only", action="store_true",
                        help="one variant, the defaults (for versions without render.threads)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnvis-bound-"))
    images = work / "images"
    images.mkdir()
    write_images(images, 96)
    jobs = {
        "demo, defaults": [],
        "resnet50, 96 JPEGs, Grad-CAM of every prediction": [
            "model=resnet50", "model.weights=null", "dataset=imagefolder", f"dataset.root={images}",
            "selection.criteria=[all]", "selection.max_samples=null", "targets=[pred]"],
    }
    variants = {"defaults": []} if args.defaults_only else \
        {"drawing in the main thread": ["render.threads=0"], "drawing beside the model": []}
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for round_number in range(args.rounds):
        for job, overrides in jobs.items():
            names = list(variants)[::1 if round_number % 2 == 0 else -1]
            for variant in names:
                folder = work / f"run-{round_number}-{len(results)}-{variant[:8]}"
                results.setdefault((job, variant), []).append(
                    run_once([f"device={args.device}", *overrides, *variants[variant]], folder))
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, median of "
          f"{args.rounds} interleaved rounds\n")
    print("| job | drawing | run wall time (s) | model passes (s) | model share |")
    print("|---|---|---|---|---|")
    for (job, variant), values in results.items():
        wall = statistics.median(value[0] for value in values)
        model = statistics.median(value[1] for value in values)
        print(f"| {job} | {variant} | {wall:.1f} | {model:.1f} | {model / wall:.0%} |")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
