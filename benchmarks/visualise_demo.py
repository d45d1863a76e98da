"""What feature visualisation shows on the embedded demo, measured; and its speed.

    python benchmarks/visualise_demo.py            # about 3 minutes on 2 CPU cores

The demo's scenes carry a mark in the corner of a class (class k: corner k), which the demo model uses as a
shortcut. This prints:
1. class images: each class image's logit against the test set's 99th percentile, its confidence under the
   optimisation's random transformations, and the share of its contrast energy in each corner (area share
   of a corner: 6.25%), and how much it looks like the mark (as in 2);
2. the channels that carry the three most frequent confusions' maps (analysis=[channels]): how much their
   images look like the mark (best normalised cross-correlation with the mark's template) against every
   other channel of the layer;
3. feature inversion of one test scene at six layers: the representation distance's fall and the inverted
   image's correlation with the scene;
4. the flip: the wrong predictions of the test set moved towards their true class by PGD within the default
   L2 budget: how many reach it, how large the change, and where its energy lies (mark, object);
5. speed at 128 px: seconds per objective when 1, 8 or 32 channel objectives are optimised in one batch,
   on the demo model and on torchvision's resnet18 (random weights), beside a plain forward and backward
   pass of the same batch, the loop's floor.

    python benchmarks/visualise_demo.py --only-speed   # part 5 alone
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np
import torch

from cnnvis_cli.config import ModelConfig
from cnnvis_cli.demo.scene import CUE_CENTRE_LEVEL, CUE_FRAME_LEVEL, CUE_SIZE, SPLIT_SIZES, render_scene
from cnnvis_cli.exemplars import channel_shares
from cnnvis_cli.layouts import NCHW, Layout
from cnnvis_cli.models import load_model
from cnnvis_cli.techniques.flip import budget_for, flip_towards
from cnnvis_cli.visualise.inversion import invert
from cnnvis_cli.visualise.objectives import Objective
from cnnvis_cli.visualise.render import Pixels, RenderSettings, render

CORNER = 24  # pixels a side of a corner region


def scenes(count: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    drawn = [render_scene("test", index) for index in range(count)]
    images = torch.stack([torch.from_numpy(scene.image).permute(2, 0, 1) for scene in drawn]).float() / 255
    return images, torch.tensor([scene.label for scene in drawn]), drawn


def corner_shares(image: torch.Tensor) -> list[float]:
    energy = (image - image.mean(dim=(1, 2), keepdim=True)).pow(2).sum(dim=0)
    top, bottom, left, right = slice(None, CORNER), slice(-CORNER, None), slice(None, CORNER), slice(-CORNER, None)
    corners = [energy[top, left], energy[top, right], energy[bottom, left], energy[bottom, right]]  # classes 0-3
    return [float(corner.sum() / energy.sum()) for corner in corners]


def mark_template() -> np.ndarray:
    template = np.full((CUE_SIZE, CUE_SIZE), CUE_FRAME_LEVEL, np.float32)
    inner = CUE_SIZE // 3
    template[inner:CUE_SIZE - inner, inner:CUE_SIZE - inner] = CUE_CENTRE_LEVEL
    return template


def mark_likeness(image: torch.Tensor) -> float:
    grey = (image.mean(dim=0).numpy() * 255).astype(np.float32)
    return float(cv2.matchTemplate(grey, mark_template(), cv2.TM_CCOEFF_NORMED).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--only-speed", action="store_true")
    args = parser.parse_args()
    if args.only_speed:
        speed()
        return
    torch.manual_seed(0)
    model = load_model(ModelConfig(source="demo", name="demo"))
    net, layouts = model.module, {info.name: info.layout for info in model.layers}
    pixels = Pixels(model.preprocess.mean, model.preprocess.std)
    images, labels, drawn = scenes(SPLIT_SIZES["test"])
    with torch.no_grad():
        logits = net(pixels.normalise(images))
    predicted = logits.argmax(dim=1)
    wrong = torch.nonzero(predicted != labels)[:, 0]
    print(f"demo test set: {len(images)} scenes, {len(wrong)} wrong predictions")

    print("\n1. class images")
    classes = [Objective("class", k, label=name) for k, name in enumerate(model.class_names)]
    rendering = render(net, classes, size=96, pixels=pixels, settings=RenderSettings(steps=args.steps))
    ceiling = torch.quantile(logits, 0.99, dim=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        confidence = torch.stack([net(pixels.normalise(RenderSettings().transforms(rendering.images, generator)))
                                  .softmax(dim=1).diagonal() for _ in range(32)]).mean(dim=0)
    for k, objective in enumerate(classes):
        shares = corner_shares(rendering.images[k])
        value = float(rendering.values[k])
        print(f"  {objective.label:9s} logit {value:7.1f} = {value / float(ceiling[k]):5.1f}x the test set's p99; "
              f"confidence {float(confidence[k]):.3f}; corner energy "
              + " ".join(f"{share:.1%}" for share in shares) + f" (its mark's corner: {shares[k]:.1%}); "
              f"mark likeness {mark_likeness(rendering.images[k]):.2f}")

    print("\n2. channels of the frequent confusions, and the mark")
    layer = model.target_layer
    cells: dict[tuple[int, int], list[int]] = {}
    for row in wrong.tolist():
        cells.setdefault((int(labels[row]), int(predicted[row])), []).append(row)
    top_cells = sorted(cells.items(), key=lambda item: -len(item[1]))[:3]
    carried = []
    for (true, guessed), rows in top_cells:
        chosen = torch.tensor(rows[:32])
        shares = channel_shares(net, layer, pixels.normalise(images[chosen]), torch.arange(len(chosen)),
                                torch.full((len(chosen),), guessed)).sum(dim=0)
        channels = [int(c) for c in torch.argsort(shares, descending=True)[:3]]
        carried.append(((true, guessed), channels))
    count = next(info for info in model.layers if info.name == layer).shape[0]
    every = [Objective("channel", unit, layer, layouts[layer]) for unit in range(count)]
    channel_images = render(net, every, size=96, pixels=pixels, settings=RenderSettings(steps=args.steps),
                            layouts=layouts).images
    likeness = np.array([mark_likeness(image) for image in channel_images])
    scene_likeness = np.mean([mark_likeness(images[row]) for row in range(20)])
    for (true, guessed), channels in carried:
        print(f"  {model.class_names[true]} -> {model.class_names[guessed]}: channels {channels}, mark likeness "
              + ", ".join(f"{likeness[c]:.2f}" for c in channels))
    print(f"  every channel of {layer}: median {np.median(likeness):.2f}, 90th percentile "
          f"{np.percentile(likeness, 90):.2f}; a test scene (holding a mark): {scene_likeness:.2f}")

    print("\n3. inversion of test scene 0")
    names = [info.name for info in model.layers]
    chosen_layers = [names[round(i * (len(names) - 1) / 5)] for i in range(6)]
    inversion = invert(net, images[0], chosen_layers, layouts, pixels=pixels)
    for name, start, end, r in zip(chosen_layers, inversion.start, inversion.distance, inversion.correlation,
                                   strict=True):
        print(f"  {name:12s} distance {float(start):.3f} -> {float(end):.5f} ({float(start / end):6.0f}x); "
              f"correlation with the scene {float(r):.2f}")

    print("\n4. flip towards the true class")
    mean = torch.tensor(model.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.preprocess.std).view(1, 3, 1, 1)
    budget = budget_for("l2", None, 96, 96)
    flipped = flip_towards(net, images[wrong], labels[wrong], mean=mean, std=std, norm="l2", budget=budget)
    energy = flipped.change.pow(2).sum(dim=1)
    mark, shape = torch.zeros_like(energy), torch.zeros_like(energy)
    for k, row in enumerate(wrong.tolist()):
        x0, y0, x1, y1 = drawn[row].cue_box
        mark[k, y0:y1, x0:x1] = 1
        x0, y0, x1, y1 = drawn[row].object_box
        shape[k, y0:y1, x0:x1] = 1
    reached = flipped.reached
    total = energy.sum(dim=(1, 2))
    print(f"  budget L2 {budget:.2f}: {int(reached.sum())} of {len(reached)} reach their true class; median change "
          f"L2 {float(flipped.change.flatten(1).norm(dim=1)[reached].median()):.3f}")
    print(f"  energy on the mark {float(((energy * mark).sum(dim=(1, 2)) / total)[reached].mean()):.1%} "
          f"(area {float(mark.mean()):.1%}); on the object's box "
          f"{float(((energy * shape).sum(dim=(1, 2)) / total)[reached].mean()):.1%} (area {float(shape.mean()):.1%})")

    speed()


def speed() -> None:
    import torchvision

    print("\n5. speed at 128 px (channel objectives of the target layer, 16 steps; median of 3 rounds)")
    demo = load_model(ModelConfig(source="demo", name="demo"))
    resnet = torchvision.models.resnet18().eval().requires_grad_(False)
    for name, net, layer, pixels in (
        ("demo", demo.module, demo.target_layer, Pixels(demo.preprocess.mean, demo.preprocess.std)),
        ("resnet18", resnet, "layer4", Pixels((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),
    ):
        layouts = {layer: Layout(NCHW)}
        for batch in (1, 8, 32):
            objectives = [Objective("channel", unit, layer, layouts[layer]) for unit in range(batch)]
            render(net, objectives, size=128, pixels=pixels, settings=RenderSettings(steps=2), layouts=layouts)
            seconds, floor = [], []
            for _ in range(3):  # interleaved rounds, the median of each
                started = time.perf_counter()
                render(net, objectives, size=128, pixels=pixels, settings=RenderSettings(steps=16), layouts=layouts)
                seconds.append((time.perf_counter() - started) / 16)
                floor.append(plain_pass(net, batch))
            seconds, floor = statistics.median(seconds), statistics.median(floor)
            print(f"  {name:8s} {batch:2d} objectives at once: {seconds * 1000:7.1f} ms per step "
                  f"({seconds / floor:.2f}x a plain forward + backward of the batch), "
                  f"{seconds / batch * 1000:6.1f} ms per objective and step, "
                  f"{seconds / batch * RenderSettings().steps:5.2f} s per objective for {RenderSettings().steps} steps")


def plain_pass(net: torch.nn.Module, batch: int, repeats: int = 4) -> float:
    """Seconds of one forward and backward pass to the input of `batch` images at 128 px."""
    images = torch.rand(batch, 3, 128, 128)
    for _ in range(2):
        torch.autograd.grad(net(images.requires_grad_(True)).sum(), [images])
    started = time.perf_counter()
    for _ in range(repeats):
        torch.autograd.grad(net(images.requires_grad_(True)).sum(), [images])
    return (time.perf_counter() - started) / repeats


if __name__ == "__main__":
    main()
