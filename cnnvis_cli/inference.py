"""The inference stage: run the model over the whole test set in batches and stream predictions to CSV.

Only per-sample numbers are kept in memory (class, confidence, margin, entropy, loss, top-k, and the probability
and rank of the true class and of the classes `targets` names), so memory grows with the number of samples by
a few dozen bytes each, never by their images. Panels read their probabilities and ranks from here, so the
explanation stage never runs the model again for them.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from cnnvis_cli.data import UNLABELLED, BadSample, Batch
from cnnvis_cli.device import autocast
from cnnvis_cli.embeddings import FeatureTap
from cnnvis_cli.errors import UserError, first_line
from cnnvis_cli.exemplars import NAMES as EXEMPLAR_ARRAYS
from cnnvis_cli.exemplars import ExemplarCollector, Exemplars, merge_exemplars
from cnnvis_cli.memory import Halving, release_freed_memory
from cnnvis_cli.models import Preprocess
from cnnvis_cli.progress import progress_bar
from cnnvis_cli.run_dir import CsvStream


@dataclass
class Predictions:
    """What the model said about every readable sample, in loader order."""

    indices: np.ndarray  # the sample's index in its source
    sample_ids: list[str]
    labels: np.ndarray  # UNLABELLED where unknown
    predicted: np.ndarray
    confidence: np.ndarray  # top-1 probability
    margin: np.ndarray  # top-1 minus top-2 probability
    entropy: np.ndarray  # entropy of the class distribution divided by log(classes), in [0, 1]
    loss: np.ndarray  # cross-entropy of the true class; NaN where unlabelled
    topk_classes: np.ndarray  # N x k
    topk_probs: np.ndarray  # N x k
    bad: list[BadSample] = field(default_factory=list)
    # classes followed beyond the top k: the label (-1 where none), then each class `targets` names; N x T
    tracked_classes: np.ndarray | None = None
    tracked_probs: np.ndarray | None = None
    tracked_ranks: np.ndarray | None = None  # 1 = the model's top guess; 0 where the class is -1
    embeddings: np.ndarray | None = None  # N x D float16 features of the classifier head (embeddings.py); D = 0: none
    exemplars: Exemplars | None = None  # per channel of the target layer, the samples where it fires most

    def __post_init__(self) -> None:
        if self.embeddings is None:
            self.embeddings = np.zeros((len(self.indices), 0), dtype=np.float16)
        if self.tracked_classes is None:
            self.tracked_classes = np.empty((len(self.indices), 0), dtype=np.int64)
            self.tracked_probs = np.empty((len(self.indices), 0), dtype=np.float32)
            self.tracked_ranks = np.empty((len(self.indices), 0), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def standing(self, row: int, class_index: int) -> tuple[float, int] | None:
        """The probability and rank (1 = top guess) the model gave class `class_index` for sample `row`, when
        kept: a class of the top k, the label, or a class that `targets` names."""
        for classes, probs, ranks in ((self.topk_classes[row], self.topk_probs[row], None),
                                      (self.tracked_classes[row], self.tracked_probs[row], self.tracked_ranks[row])):
            found = np.flatnonzero(classes == class_index)
            if len(found):
                place = int(found[0])
                return float(probs[place]), place + 1 if ranks is None else int(ranks[place])
        return None

    @property
    def labelled(self) -> np.ndarray:
        return self.labels != UNLABELLED

    @property
    def correct(self) -> np.ndarray:
        return self.labelled & (self.predicted == self.labels)

    def accuracy(self) -> float | None:
        labelled = int(self.labelled.sum())
        return float(self.correct.sum() / labelled) if labelled else None


def class_name(class_names: list[str], index: int, missing: str = "") -> str:
    """The name of class `index`, or `missing` for an unlabelled sample."""
    return class_names[index] if 0 <= index < len(class_names) else missing


ARRAYS = ("indices", "labels", "predicted", "confidence", "margin", "entropy", "loss", "topk_classes", "topk_probs",
          "tracked_classes", "tracked_probs", "tracked_ranks", "embeddings")


def predictions_bytes(predictions: Predictions) -> bytes:
    """`Predictions` at full precision as .npz bytes: what `cnnvis run resume=...` reuses."""
    buffer = io.BytesIO()
    exemplars = predictions.exemplars
    kept = {} if exemplars is None else {
        **{f"exemplar_{name}": getattr(exemplars, name) for name in EXEMPLAR_ARRAYS},
        "exemplar_grid": np.asarray(exemplars.grid, dtype=np.int64)}
    np.savez(buffer, **{name: getattr(predictions, name) for name in ARRAYS}, **kept,
             sample_ids=np.array(predictions.sample_ids, dtype=str),
             bad=np.array([(str(b.index), b.sample_id, b.reason) for b in predictions.bad], dtype=str).reshape(-1, 3))
    return buffer.getvalue()


def concat_predictions(parts: list[Predictions]) -> Predictions:
    """The predictions of consecutive shards of a test set as one, in shard order."""
    def joined(name: str) -> np.ndarray:
        arrays = [getattr(part, name) for part in parts]
        if name == "embeddings":  # a shard without samples has no feature width
            arrays = [array for array in arrays if len(array)] or arrays[:1]
        return np.concatenate(arrays)

    return Predictions(**{name: joined(name) for name in ARRAYS},
                       exemplars=merge_exemplars([part.exemplars for part in parts]),
                       sample_ids=[sample_id for part in parts for sample_id in part.sample_ids],
                       bad=[bad for part in parts for bad in part.bad])


class UnreadablePredictions(ValueError):
    """Stored predictions that are cut short, tampered with, or not predictions at all."""


def predictions_from_bytes(data: bytes) -> Predictions:
    """The `Predictions` that `predictions_bytes` stored; UnreadablePredictions for anything else (arrays of
    objects, which would need pickle, are refused)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            bad = [BadSample(int(index), str(sample_id), str(reason)) for index, sample_id, reason in stored["bad"]]
            exemplars = None if "exemplar_values" not in stored else Exemplars(
                *(stored[f"exemplar_{name}"] for name in EXEMPLAR_ARRAYS),
                tuple(int(side) for side in stored["exemplar_grid"]))  # type: ignore[arg-type]
            predictions = Predictions(**{name: stored[name] for name in ARRAYS}, exemplars=exemplars,
                                      sample_ids=[str(i) for i in stored["sample_ids"]], bad=bad)
        rows = {len(getattr(predictions, name)) for name in ARRAYS} | {len(predictions.sample_ids)}
    except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile) as error:
        raise UnreadablePredictions(first_line(str(error)) or type(error).__name__) from error
    top, tracked = predictions.topk_classes, predictions.tracked_classes
    if (len(rows) != 1 or top.ndim != 2 or top.shape != predictions.topk_probs.shape or tracked.ndim != 2
            or not tracked.shape == predictions.tracked_probs.shape == predictions.tracked_ranks.shape):
        raise UnreadablePredictions("its arrays do not describe the same samples")
    return predictions


def refuse_unreadable(bad: list[BadSample]) -> None:
    """With strict=true, the first unreadable image stops the run."""
    if bad:
        raise UserError(f"unreadable image {bad[0].sample_id} ({bad[0].reason}); strict=true stops here")


def prediction_header(topk: int, extra_columns: Iterable[str]) -> list[str]:
    return [
        "index", "sample_id", "label", "label_name", "predicted", "predicted_name", "correct",
        "confidence", "margin", "entropy", "loss", f"top{topk}_classes", f"top{topk}_probs", *extra_columns,
    ]


def predict(model: nn.Module, batches: Iterable[Batch], preprocess: Preprocess, device: torch.device, *,
            class_names: list[str], topk: int, csv: CsvStream, keep_k: int | None = None,
            tracked: tuple[int, ...] = (), extra_columns: tuple[str, ...] = (),
            amp: bool = False, total: int | None = None, show_progress: bool = True,
            sample_id=str, strict: bool = False,
            forward: Callable[[torch.Tensor, torch.Tensor, list[int]], torch.Tensor] | None = None,
            features: FeatureTap | None = None, exemplars: ExemplarCollector | None = None) -> Predictions:
    """Classify every batch; write one CSV row per sample as each batch finishes.

    The CSV lists the top `topk` classes; `Predictions` keeps the top `keep_k` (at least `topk`), and the
    probability and rank of each sample's label and of the `tracked` classes. Unreadable samples are collected
    in `Predictions.bad`, or stop the run with `strict`. `forward(inputs, labels, indices)`, when given, gives
    the logits instead of the model (a pass that also serves the explanation: fused.py). With `features`
    (open), each sample's penultimate features are kept too (`Predictions.embeddings`); with `exemplars`
    (open), the samples where each channel of the target layer fires most (`Predictions.exemplars`).
    """
    k = min(max(topk, keep_k or topk), len(class_names))
    parts: dict[str, list] = {key: [] for key in ARRAYS}
    sample_ids: list[str] = []
    bad: list[BadSample] = []
    halving = Halving("inference")
    with progress_bar(show_progress) as bar, torch.inference_mode(forward is None):
        task = bar.add_task("inference", total=total, unit="images")
        for batch_number, batch in enumerate(batches):
            release_freed_memory(batch_number)
            if strict:
                refuse_unreadable(batch.bad)
            bad += batch.bad
            if batch.indices:
                images = batch.images.to(device, non_blocking=True)
                labels = batch.labels.to(device)

                def classify(part: slice, images=images, labels=labels, indices=batch.indices) -> dict[str, np.ndarray]:
                    if forward is not None:
                        logits = forward(normalise(images[part], preprocess), labels[part], indices[part])
                    else:
                        with autocast(device, amp):
                            logits = model(normalise(images[part], preprocess))
                    stats = _batch_statistics(logits.float(), labels[part], k, tracked)
                    stats["embeddings"] = features.take() if features is not None else \
                        np.zeros((len(logits), 0), dtype=np.float16)
                    if exemplars is not None:
                        exemplars.update(indices[part])
                    return stats

                parts_of_batch = halving.run(len(batch.indices), classify)
                stats = {key: np.concatenate([part[key] for part in parts_of_batch]) for key in parts_of_batch[0]}
                ids = [sample_id(index) for index in batch.indices]
                csv.write(_rows(batch, ids, stats, class_names, topk, extra_columns))
                for key, value in stats.items():
                    parts[key].append(value)
                parts["indices"].append(np.asarray(batch.indices, dtype=np.int64))
                parts["labels"].append(batch.labels.numpy())
                sample_ids += ids
            bar.advance(task, len(batch.indices) + len(batch.bad))
    joined = {key: np.concatenate(value) if value else _empty(key, k, 1 + len(tracked)) for key, value in parts.items()}
    return Predictions(sample_ids=sample_ids, bad=bad, exemplars=exemplars.exemplars if exemplars else None,
                       **joined)


def normalise(images: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """uint8 N x 3 x H x W -> the float tensor the model expects, on the images' device."""
    mean = torch.tensor(preprocess.mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def ranked(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.return_types.topk]:
    """The log-probabilities of float logits, and the top max(k, 2) classes by probability: the order that
    predictions, top-k columns and `topN` targets follow."""
    log_probs = torch.log_softmax(logits, dim=1)
    return log_probs, log_probs.exp().topk(min(max(k, 2), log_probs.shape[1]), dim=1)


def _batch_statistics(logits: torch.Tensor, labels: torch.Tensor, k: int,
                      tracked: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    """Per-sample confidence, margin, entropy, loss, top-k, and the probability and rank of the label and of
    the `tracked` classes, from a batch of logits, on the device."""
    log_probs, top = ranked(logits, k)
    probs = log_probs.exp()
    second = top.values[:, 1] if probs.shape[1] > 1 else torch.zeros_like(top.values[:, 0])
    entropy = -(probs * log_probs).nan_to_num().sum(dim=1) / max(math.log(probs.shape[1]), 1e-12)
    has_label = labels >= 0
    safe_labels = labels.clamp(min=0, max=probs.shape[1] - 1)
    loss = -log_probs.gather(1, safe_labels[:, None])[:, 0]
    loss = torch.where(has_label & (labels < probs.shape[1]), loss, torch.full_like(loss, float("nan")))
    values = {
        "predicted": top.indices[:, 0],
        "confidence": top.values[:, 0],
        "margin": top.values[:, 0] - second,
        "entropy": entropy,
        "loss": loss,
        "topk_classes": top.indices[:, :k],
        "topk_probs": top.values[:, :k],
        **_standings(probs, torch.where(has_label & (labels < probs.shape[1]), labels, -1), tracked),
    }
    return {key: value.cpu().numpy() for key, value in values.items()}


def _standings(probs: torch.Tensor, labels: torch.Tensor, tracked: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Each row's label (-1: none) and the `tracked` classes with their probabilities and ranks; a class's rank
    is its place when the classes are ordered by probability, ties by index."""
    classes = torch.cat([labels[:, None], torch.tensor(tracked, dtype=labels.dtype, device=labels.device)
                         .expand(len(labels), len(tracked))], dim=1)
    safe = classes.clamp(min=0)
    chosen = probs.gather(1, safe)  # N x T
    order = torch.arange(probs.shape[1], device=probs.device)
    ahead = (probs[:, None, :] > chosen[..., None]) | ((probs[:, None, :] == chosen[..., None])
                                                       & (order < safe[..., None]))
    ranks = ahead.sum(dim=2) + 1
    missing = classes < 0
    return {"tracked_classes": classes, "tracked_probs": chosen.masked_fill(missing, 0.0),
            "tracked_ranks": ranks.masked_fill(missing, 0)}


def _rows(batch: Batch, ids: list[str], stats: dict[str, np.ndarray], class_names: list[str], topk: int,
          extra_columns: tuple[str, ...]):
    for row, index in enumerate(batch.indices):
        label = int(batch.labels[row])
        predicted = int(stats["predicted"][row])
        yield [
            index, ids[row], label if label != UNLABELLED else "",
            class_name(class_names, label),
            predicted, class_names[predicted],
            int(label == predicted) if label != UNLABELLED else "",
            f"{stats['confidence'][row]:.6f}", f"{stats['margin'][row]:.6f}", f"{stats['entropy'][row]:.6f}",
            f"{stats['loss'][row]:.6f}" if label != UNLABELLED else "",
            "|".join(class_names[c] for c in stats["topk_classes"][row][:topk]),
            " ".join(f"{p:.6f}" for p in stats["topk_probs"][row][:topk]),
            *(batch.extras[row].get(column, "") for column in extra_columns),
        ]


def _empty(key: str, k: int, tracked: int) -> np.ndarray:
    if key == "embeddings":
        return np.zeros((0, 0), dtype=np.float16)
    if key.startswith(("topk", "tracked")):
        float_values = key in ("topk_probs", "tracked_probs")
        return np.empty((0, k if key.startswith("topk") else tracked), dtype=np.float32 if float_values else np.int64)
    return np.empty(0, dtype=np.int64 if key in ("indices", "labels", "predicted") else np.float32)
