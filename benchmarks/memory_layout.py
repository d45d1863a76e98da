"""Which models run faster with their feature maps stored channels-last (NHWC) on this machine.

    python benchmarks/memory_layout.py [--models resnet18,densenet121,...] [--batch 16] [--rounds 3]

For each model (random-initialised weights, 224 px; `demo` is the demo network at its own size) this
times a forward pass with the gradient of one class taken at the model's CAM layer, as Grad-CAM and the
fused inference pass do, once with the default (contiguous, NCHW) weights and once with channels-last
weights (`model.to(memory_format=torch.channels_last)`, what `model.channels_last` does). Rounds are
interleaved; the table gives the median seconds per pass and the ratio channels-last / default measured
in the same run, and whether the model has a LayerNorm, which decides cnnvis's default on the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from cnnvis_cli.config import ModelConfig
from cnnvis_cli.models import load_model

MODELS = ("resnet18,resnet50,densenet121,efficientnet_b0,mobilenet_v3_large,vgg16,squeezenet1_1,regnet_y_400mf,"
          "convnext_tiny,swin_t,vit_b_16,demo")


def config(name: str) -> ModelConfig:
    return ModelConfig(name="demo", source="demo") if name == "demo" else ModelConfig(name=name, weights=None)


def seconds_per_pass(model: nn.Module, layer: nn.Module, images: torch.Tensor) -> float:
    """One forward pass keeping `layer`'s output, and the gradient of class 0 with respect to it."""
    kept = {}

    def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        kept["output"] = output.detach().requires_grad_(True)
        return kept["output"].clone()

    handle = layer.register_forward_hook(keep)
    start = time.perf_counter()
    try:
        logits = model(images)
        torch.autograd.grad(logits[:, 0].sum(), kept["output"])
    finally:
        handle.remove()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; one forward pass of "
          f"{args.batch} images with a class's gradient at the CAM layer, median of {args.rounds} interleaved "
          "rounds\n")
    print("| model | LayerNorm | default (s) | channels-last (s) | ratio |")
    print("|---|---|---|---|---|")
    layouts = (torch.contiguous_format, torch.channels_last)
    for name in args.models.split(","):
        torch.manual_seed(0)
        loaded = load_model(config(name))
        layer = loaded.module.get_submodule(loaded.target_layer)
        size = loaded.preprocess.input_size
        images = torch.randn(args.batch, 3, size, size)
        timings: dict[torch.memory_format, list[float]] = {layout: [] for layout in layouts}
        for round_number in range(args.rounds + 1):  # round 0 warms both layouts up
            for layout in layouts[round_number % 2:] + layouts[:round_number % 2]:
                loaded.module.to(memory_format=layout)
                seconds = seconds_per_pass(loaded.module, layer, images)
                if round_number:
                    timings[layout].append(seconds)
        default, last = (statistics.median(timings[layout]) for layout in layouts)
        has_layer_norm = any(isinstance(module, nn.LayerNorm) for module in loaded.module.modules())
        print(f"| {name} | {'yes' if has_layer_norm else 'no'} | {default:.3f} | {last:.3f} | {last / default:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
