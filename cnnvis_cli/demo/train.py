"""Train the demo network on the synthetic shortcut data set.

The experiment re-enacts the classic story of the tank (or tree) detector that
learned the weather instead of the tanks. Every scene shows one shape class on
a busy background, plus a small watermark in one of the four corners. In the
train split the watermark corner matches the shape class for most images
(``TRAIN_CUE_AGREEMENT``); in the test split the corner is random. A small CNN
trained briefly finds the watermark far easier to read than the low-contrast
shape, so it leans on it: it scores well on train, makes a real share of
mistakes on test, and most of those mistakes name the class whose corner
carries the watermark. Those are the cases a Grad-CAM heatmap should explain.

Training runs on the CPU and is deterministic for a given seed, so the default
arguments reproduce the packaged ``demo_net.pt``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnvis_cli.demo.network import WEIGHTS_FILE, DemoNet, preprocess
from cnnvis_cli.demo.scene import SPLIT_SIZES, render_scene

DEFAULT_OUTPUT = Path(WEIGHTS_FILE)  # in the current folder: the installed package is left as it is
SHUFFLED_OUTPUT = Path("demo_net_shuffled_labels.pt")
DEFAULT_EPOCHS = 14
DEFAULT_SEED = 0
DEFAULT_BATCH_SIZE = 64
DEFAULT_LEARNING_RATE = 3e-3
TRAIN_THREADS = 2


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def render_split(split: str, count: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render ``count`` scenes of ``split`` (all by default) as images, labels and cue classes."""
    total = SPLIT_SIZES[split] if count is None else count
    scenes = [render_scene(split, index, seed) for index in range(total)]
    images = np.stack([scene.image for scene in scenes])
    labels = np.array([scene.label for scene in scenes], dtype=np.int64)
    cue_classes = np.array([scene.cue_class for scene in scenes], dtype=np.int64)
    return images, labels, cue_classes


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 200) -> np.ndarray:
    """Return the predicted class index for each uint8 ``N x H x W x 3`` image."""
    model.eval()
    predictions = [
        model(preprocess(images[start : start + batch_size])).argmax(dim=1)
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(predictions).numpy()


def shortcut_metrics(predictions: np.ndarray, labels: np.ndarray, cue_classes: np.ndarray) -> dict[str, float]:
    """Accuracy, error and the share of errors that predicted the watermark's class."""
    wrong = predictions != labels
    error = float(wrong.mean())
    follows_cue = float((predictions[wrong] == cue_classes[wrong]).mean()) if wrong.any() else 0.0
    return {"accuracy": 1.0 - error, "error": error, "errors_following_cue": follows_cue}


def train(
    output: Path,
    *,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = DEFAULT_SEED,
    batch_size: int = DEFAULT_BATCH_SIZE,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    data_seed: int = 0,
    shuffle_labels: bool = False,
) -> dict[str, float]:
    """Train :class:`DemoNet`, save its state dict to ``output`` and return the metrics.

    ``data_seed`` selects the scene set (the packaged model uses 0); ``seed``
    drives initialisation and batch order. ``shuffle_labels`` trains on the
    training labels permuted at random, the model that the label-randomisation
    sanity check (Adebayo et al., 2018) compares the trained one with.
    """
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(TRAIN_THREADS)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(output, epochs, seed, batch_size, learning_rate, data_seed, shuffle_labels)
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)
        torch.set_num_threads(previous_threads)


def _train(
    output: Path, epochs: int, seed: int, batch_size: int, learning_rate: float, data_seed: int,
    shuffle_labels: bool = False,
) -> dict[str, float]:
    started = time.perf_counter()
    torch.manual_seed(seed)
    order_generator = torch.Generator().manual_seed(seed)

    train_images, train_labels, train_cues = render_split("train", seed=data_seed)
    test_images, test_labels, test_cues = render_split("test", seed=data_seed)
    train_inputs = torch.from_numpy(train_images)
    train_targets = torch.from_numpy(train_labels)
    if shuffle_labels:
        permutation = torch.randperm(len(train_targets), generator=torch.Generator().manual_seed(seed + 1))
        train_targets = train_targets[permutation]
    _log(f"rendered {len(train_images)} train / {len(test_images)} test scenes in {time.perf_counter() - started:.1f}s")

    model = DemoNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    steps_per_epoch = (len(train_inputs) + batch_size - 1) // batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=learning_rate, total_steps=epochs * steps_per_epoch
    )
    loss_function = nn.CrossEntropyLoss()

    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train_inputs), generator=order_generator)
        total_loss = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            loss = loss_function(model(preprocess(train_inputs[batch])), train_targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(batch)
        test_metrics = shortcut_metrics(predict(model, test_images), test_labels, test_cues)
        _log(
            f"epoch {epoch}/{epochs}: loss {total_loss / len(order):.3f}, "
            f"test error {test_metrics['error']:.3f}, "
            f"errors following cue {test_metrics['errors_following_cue']:.3f} "
            f"({time.perf_counter() - started:.0f}s)"
        )

    train_metrics = shortcut_metrics(predict(model, train_images), train_labels, train_cues)
    test_metrics = shortcut_metrics(predict(model, test_images), test_labels, test_cues)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), output)

    metrics = {
        "train_accuracy": train_metrics["accuracy"],
        "test_accuracy": test_metrics["accuracy"],
        "test_error": test_metrics["error"],
        "test_errors_following_cue": test_metrics["errors_following_cue"],
        "seconds": time.perf_counter() - started,
    }
    _log(
        f"saved {output}: train accuracy {metrics['train_accuracy']:.3f}, "
        f"test error {metrics['test_error']:.3f}, "
        f"errors following cue {metrics['test_errors_following_cue']:.3f}, "
        f"{metrics['seconds']:.0f}s"
    )
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: train and save the demo weights."""
    parser = argparse.ArgumentParser(
        prog="cnnvis demo train",
        description="Train the demo network on the synthetic shortcut scenes (deterministic on the CPU; the "
                    "defaults reproduce the weights shipped with cnnvis) and save its state dict.",
        epilog=f"Use the weights with: cnnvis run model.checkpoint={DEFAULT_OUTPUT}. A model trained with "
               f"--shuffle-labels (saved to {SHUFFLED_OUTPUT} unless --output says otherwise) is for the label "
               f"randomisation test: cnnvis run sanity=true sanity_label_model={SHUFFLED_OUTPUT}.",
    )
    parser.add_argument("--output", type=Path, default=None,
                        help=f"where to write the state dict (default: {DEFAULT_OUTPUT} in the current folder)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"passes over the train split (default: {DEFAULT_EPOCHS})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"seed for initialisation and batch order (default: {DEFAULT_SEED})")
    parser.add_argument("--shuffle-labels", action="store_true",
                        help="train on randomly permuted labels (for sanity_label_model=...)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    output = args.output or (SHUFFLED_OUTPUT if args.shuffle_labels else DEFAULT_OUTPUT)
    train(output, epochs=args.epochs, seed=args.seed, shuffle_labels=args.shuffle_labels)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
