"""How many inputs a many-pass technique should send through the model at once on this machine.

    python benchmarks/inputs_per_pass.py [--models resnet18,efficientnet_b0,vgg16,demo] [--rounds 5]

Score-CAM, Ablation-CAM, occlusion, RISE, integrated gradients and SmoothGrad spend their time in forward
passes of `technique.batch_size` inputs. For each model and batch size this times one forward pass per
input (no gradients, random-initialised weights, the model's input size), rounds interleaved so that a
busy machine slows every batch size alike, and prints the median seconds per input with its ratio to the
baseline of 8 inputs per pass measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

from cnnvis_cli.demo.network import load_demo_model
from cnnvis_cli.demo.scene import IMAGE_SIZE

BASELINE = 8


def model_and_size(name: str) -> tuple[torch.nn.Module, int]:
    if name == "demo":
        return load_demo_model(), IMAGE_SIZE
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None).eval(), 224


@torch.inference_mode()
def seconds_per_input(model: torch.nn.Module, inputs: torch.Tensor) -> float:
    start = time.perf_counter()
    model(inputs)
    return (time.perf_counter() - start) / len(inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,efficientnet_b0,vgg16,demo")
    parser.add_argument("--sizes", default="1,4,8,16,32,64")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; seconds per input of a forward pass "
          f"(median of {args.rounds} interleaved rounds) and the ratio to {BASELINE} inputs per pass\n")
    print("| model | " + " | ".join(f"{size} per pass" for size in sizes) + " |")
    print("|---" * (len(sizes) + 1) + "|")
    for name in args.models.split(","):
        model, size = model_and_size(name)
        batches = {batch: torch.randn(batch, 3, size, size) for batch in sizes}
        for inputs in batches.values():
            seconds_per_input(model, inputs)  # warm up every shape
        timings: dict[int, list[float]] = {batch: [] for batch in sizes}
        for round_number in range(args.rounds):
            order = sizes[round_number % len(sizes):] + sizes[:round_number % len(sizes)]
            for batch in order:
                timings[batch].append(seconds_per_input(model, batches[batch]))
        medians = {batch: statistics.median(values) for batch, values in timings.items()}
        base = medians.get(BASELINE) or medians[sizes[0]]
        cells = " | ".join(f"{medians[batch] * 1000:.2f} ms ({medians[batch] / base:.2f}x)" for batch in sizes)
        print(f"| {name} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
