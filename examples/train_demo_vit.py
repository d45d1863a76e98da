"""Train a small timm vision transformer on the demo's shortcut scenes, to see what a transformer's maps show.

    pip install 'cnnvis[timm]'
    python examples/train_demo_vit.py                     # writes demo_vit.pt (about 3 minutes on 2 CPU cores)

The demo's train split pairs each shape class with a mark in one corner (85% of the images); its test split
places the mark at random. Like the demo CNN, the transformer learns the mark, and its wrong test predictions
name the class whose corner carries it. The script prints the `cnnvis run` command that explains them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnvis_cli.demo.train import render_split, shortcut_metrics

ARCHITECTURE = "vit_tiny_patch16_224"
OPTIONS = {"img_size": 96, "patch_size": 12, "depth": 4}  # an 8 x 8 grid of 12 px patches, four blocks
MEAN = STD = 0.5  # the architecture's normalisation in timm's data config


def inputs(images: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - MEAN) / STD


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray) -> np.ndarray:
    model.eval()
    return torch.cat([model(inputs(images[start:start + 200])).argmax(dim=1)
                      for start in range(0, len(images), 200)]).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("demo_vit.pt"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import timm

    torch.manual_seed(args.seed)
    started = time.perf_counter()
    train_images, train_labels, _ = render_split("train")
    test_images, test_labels, test_cues = render_split("test")
    model = timm.create_model(ARCHITECTURE, pretrained=False, num_classes=4, **OPTIONS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    steps = args.epochs * -(-len(train_images) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps)
    targets = torch.from_numpy(train_labels)
    order_generator = torch.Generator().manual_seed(args.seed)
    for epoch in range(1, args.epochs + 1):
        model.train()
        for batch in torch.randperm(len(train_images), generator=order_generator).split(64):
            loss = nn.functional.cross_entropy(model(inputs(train_images[batch.numpy()])), targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        metrics = shortcut_metrics(predict(model, test_images), test_labels, test_cues)
        print(f"epoch {epoch}/{args.epochs}: test error {metrics['error']:.3f}, errors following the mark "
              f"{metrics['errors_following_cue']:.3f} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    torch.save(model.state_dict(), args.output)
    options = ", ".join(f"{key}: {value}" for key, value in OPTIONS.items())
    print(f"saved {args.output}; explain its wrong test predictions with:\n"
          f"cnnvis run model=timm model.name={ARCHITECTURE} model.weights=null model.checkpoint={args.output} "
          f"'model.kwargs={{{options}}}' model.num_classes=4 model.class_names=dataset model.resize_size=96 "
          "'technique=[gradcam,attention_gradient,rollout]'", file=sys.stderr)


if __name__ == "__main__":
    main()
