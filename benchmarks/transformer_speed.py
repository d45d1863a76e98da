"""cnnvis on a vision transformer against its limits and against pytorch-grad-cam.

    pip install -e '.[bench,timm]'
    python benchmarks/transformer_speed.py                      # deit_small_patch16_224, 8 images, 224 px

One process, the same input tensors, random-initialised timm weights (seed 0); after a warm-up, the median of
`--repeats` interleaved rounds, in seconds per image:
- limits: the model's own forward pass (inference_mode, timm's fused attention), the same with the attention
  unfused (as the attention techniques must run it, to see the attention probabilities), a forward plus a
  backward to the Grad-CAM layer's output, and a forward plus a backward to the input (what gradient-weighted
  attention needs: every block's attention gets its gradient);
- cnnvis: Grad-CAM on the default layer, attention rollout and gradient-weighted attention, each against its
  limit;
- pytorch-grad-cam: Grad-CAM on the same layer with the reshape that fits the model, and the smallest
  per-image Pearson correlation between its maps and cnnvis's.
"""

from __future__ import annotations

import argparse
import platform
import statistics
from collections.abc import Callable

import torch
from speed import forward_backward_to_input, forward_backward_to_layer, forward_only, smallest_pearson, timed

from cnnvis_cli.layouts import model_prefix_tokens
from cnnvis_cli.models import inspect_layers, resolve_target_layer
from cnnvis_cli.techniques import TechniqueContext, build_technique
from cnnvis_cli.techniques.attention import attention_modules


def unfused_forward(model: torch.nn.Module, images: torch.Tensor) -> None:
    modules = attention_modules(model)
    flags = [module.fused_attn for module in modules]
    for module in modules:
        module.fused_attn = False
    try:
        forward_only(model, images)
    finally:
        for module, flag in zip(modules, flags, strict=True):
            module.fused_attn = flag


Maps = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def pytorch_grad_cam_gradcam(model: torch.nn.Module, layer: str) -> Maps:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    prefix = model_prefix_tokens(model) or 0

    def tokens_to_grid(tensor: torch.Tensor) -> torch.Tensor:
        grid = tensor[:, prefix:]
        side = round(grid.shape[1] ** 0.5)
        return grid.reshape(grid.shape[0], side, side, grid.shape[2]).permute(0, 3, 1, 2)

    def run(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        model.requires_grad_(True)  # as users hand their models to it
        try:
            return explain(images, targets)
        finally:
            model.requires_grad_(False)

    def explain(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with pytorch_grad_cam.GradCAM(model=model, target_layers=[model.get_submodule(layer)],
                                      reshape_transform=tokens_to_grid) as cam:
            maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        return torch.from_numpy(maps)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    import timm

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval().requires_grad_(False).to(device)
    layer = resolve_target_layer(model, None, inspect_layers(model, args.size)[0])
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    rows = torch.arange(args.batch, device=device)
    with torch.no_grad():
        targets = model(images).argmax(dim=1)
    module = model.get_submodule(layer)
    context = TechniqueContext(model, [layer])
    ours = {name: build_technique(name, context) for name in ("gradcam", "rollout", "attention_gradient")}
    reference = pytorch_grad_cam_gradcam(model, layer)

    work: dict[str, Callable[[], object]] = {
        "forward (fused attention)": lambda: forward_only(model, images),
        "forward (unfused attention)": lambda: unfused_forward(model, images),
        "forward + backward to the layer": lambda: forward_backward_to_layer(model, module, images, targets),
        "forward + backward to the input": lambda: forward_backward_to_input(model, images, targets),
        **{f"cnnvis {name}": (lambda t=technique: t.explain(images, rows, targets))
           for name, technique in ours.items()},
        "pytorch-grad-cam gradcam": lambda: reference(images, targets),
    }
    for job in work.values():  # warm-up
        job()
    rounds: dict[str, list[float]] = {name: [] for name in work}
    for _ in range(args.repeats):  # interleaved, so that the machine's drift reaches every row alike
        for name, job in work.items():
            rounds[name].append(timed(job, device) / args.batch)
    seconds = {name: statistics.median(values) for name, values in rounds.items()}
    pearson = smallest_pearson(ours["gradcam"].explain(images, rows, targets).maps, reference(images, targets))

    limits = {
        "cnnvis gradcam": "forward + backward to the layer",
        "cnnvis rollout": "forward (fused attention)",
        "cnnvis attention_gradient": "forward + backward to the input",
        "pytorch-grad-cam gradcam": "forward + backward to the layer",
    }
    print(f"{args.model}, {args.batch} images, {args.size} px, layer {layer}, {device}, torch {torch.__version__}, "
          f"timm {timm.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats} interleaved rounds\n")
    print("| work | ms per image | limit | x limit | x the model's forward |")
    print("|---|---|---|---|---|")
    forward = seconds["forward (fused attention)"]
    for name, value in seconds.items():
        limit = limits.get(name)
        ratio = f"{value / seconds[limit]:.2f}" if limit else ""
        print(f"| {name} | {value * 1000:.1f} | {limit or ''} | {ratio} | {value / forward:.2f} |")
    speed_up = seconds["pytorch-grad-cam gradcam"] / seconds["cnnvis gradcam"]
    print(f"\ncnnvis Grad-CAM against pytorch-grad-cam's: {speed_up:.2f}x faster; smallest per-image Pearson of "
          f"the maps {pearson}")


if __name__ == "__main__":
    main()
