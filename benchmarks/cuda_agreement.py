"""Every technique on CUDA against the same technique on the CPU, and with mixed precision against float32.

    python benchmarks/cuda_agreement.py --model resnet18

Random-initialised model (seed 0), 224 px, default options (RISE: 500 masks), two images with two targets
each. Prints, per technique, the smallest per-map Pearson correlation and the largest absolute difference
of the [0, 1] maps.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torchvision

from cnnvis_cli.config import TechniqueConfig
from cnnvis_cli.models import inspect_layers, resolve_target_layer
from cnnvis_cli.techniques import TECHNIQUES, TechniqueContext, build_technique

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    a, b = a.float().cpu().numpy(), b.float().cpu().numpy()
    pearsons = [float(np.corrcoef(x.ravel(), y.ravel())[0, 1]) for x, y in zip(a, b, strict=True) if np.ptp(y) > 0]
    return min(pearsons, default=float("nan")), float(np.abs(a - b).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cuda", help="the device compared with the CPU")
    args = parser.parse_args()
    torch.manual_seed(0)
    cpu_model = torchvision.models.get_model(args.model, weights=None).eval().requires_grad_(False)
    layer = resolve_target_layer(cpu_model, None, inspect_layers(cpu_model, args.size)[0])
    images = torch.randn(2, 3, args.size, args.size)
    rows, targets = torch.tensor([0, 0, 1, 1]), torch.tensor([1, 2, 3, 4])
    gpu_model = torchvision.models.get_model(args.model, weights=None).eval().requires_grad_(False)
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model.to(args.device)
    card = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else args.device
    print(f"{args.model} at {args.size} px on {card}, torch {torch.__version__}")
    print("| technique | CUDA vs CPU: min Pearson | max abs diff | AMP vs float32: min Pearson | max abs diff |")
    print("|---|---|---|---|---|")
    options = TechniqueConfig()
    options.rise.masks = 500  # keeps the CPU side short
    for name in TECHNIQUES:
        maps = {}
        for key, model, amp in (("cpu", cpu_model, False), ("cuda", gpu_model, False), ("amp", gpu_model, True)):
            device = next(model.parameters()).device
            context = TechniqueContext(model, [layer], options, amp, IMAGENET_MEAN, IMAGENET_STD)
            maps[key] = build_technique(name, context).explain(images.to(device), rows.to(device),
                                                               targets.to(device)).maps
        device_r, device_diff = compare(maps["cuda"], maps["cpu"])
        amp_r, amp_diff = compare(maps["amp"], maps["cuda"])
        print(f"| {name} | {device_r:.4f} | {device_diff:.1e} | {amp_r:.4f} | {amp_diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
