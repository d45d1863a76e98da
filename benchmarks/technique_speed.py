"""Seconds per (image, target) of every cnnvis technique, beside the model's bare forward pass.

    python benchmarks/technique_speed.py --model resnet18 --batch 4 [--device cuda] [--amp] [--only gradcam,...]

Random-initialised torchvision model (seed 0) at 224 px, techniques at their default options, one target per
image; after a warm-up, the median of `--repeats` runs. Prints a Markdown table; with `--amp`, also each
technique's per-image Pearson correlation with its float32 maps on the same device.
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from speed import median_seconds, smallest_pearson  # this folder's shared timing and agreement helpers

from cnnvis_cli.config import TechniqueConfig
from cnnvis_cli.models import inspect_layers, resolve_target_layer
from cnnvis_cli.techniques import TECHNIQUES, TechniqueContext, build_technique

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="float16 autocast (CUDA)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated technique names (default: all)")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None).eval().requires_grad_(False).to(device)
    layer = resolve_target_layer(model, None, inspect_layers(model, args.size)[0])
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    rows = torch.arange(args.batch, device=device)
    with torch.inference_mode():
        targets = model(images).argmax(dim=1)

    def bare_forward() -> None:
        with torch.inference_mode():
            model(images)

    forward = median_seconds(bare_forward, device, args.repeats) / args.batch
    card = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"{args.model}, batch {args.batch}, {args.size} px, {device}{card}, amp {args.amp}, "
          f"torch {torch.__version__}")
    print(f"bare forward (no grad): {forward:.4g} s per image\n")
    header = "| technique | s per (image, target) | x bare forward | cost |"
    if args.amp:
        header += " Pearson AMP vs float32 |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    names = [name for name in TECHNIQUES if not args.only or name in args.only.split(",")]
    for name in names:
        context = TechniqueContext(model, [layer], TechniqueConfig(), args.amp, IMAGENET_MEAN, IMAGENET_STD)
        technique = build_technique(name, context)
        seconds = median_seconds(lambda t=technique: t.explain(images, rows, targets), device, args.repeats)
        line = f"| {name} | {seconds / args.batch:.4g} | {seconds / args.batch / forward:.1f} | {technique.cost} |"
        if args.amp:
            exact = build_technique(name, TechniqueContext(model, [layer], TechniqueConfig(), False, IMAGENET_MEAN,
                                                           IMAGENET_STD))
            halves, singles = (t.explain(images, rows, targets).maps for t in (technique, exact))
            line += f" {smallest_pearson(halves, singles)} |"
        print(line, flush=True)


if __name__ == "__main__":
    main()
