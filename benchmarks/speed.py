"""cnnvis's speed against the model's own limits and against pytorch-grad-cam, torch-cam and Captum.

    pip install -e '.[bench]'
    python benchmarks/speed.py                                  # resnet18, vgg16 and the demo model
    python benchmarks/speed.py --models demo --sections limits,techniques --out /tmp/bench

In one process and on the same input tensors, after a warm-up, the median of `--repeats` runs (techniques
that make hundreds of passes run once, after their limit has been warmed up):
- limits: a bare forward pass (inference_mode) and a forward plus a backward to the target layer's output
  or to the input (no parameter gradients), at the techniques' batch size and at the pass batch size;
- inference: cnnvis's inference stage (decode, transform, forward, bookkeeping, CSV) over JPEG files the
  benchmark writes (the demo's own images for the demo), in images per second and against the bare forward;
- techniques: seconds per (image, target) and the ratio to each technique's limit; for the Grad-CAM family
  also two targets per image against one;
- references: the same techniques through the other libraries at their defaults (Captum's batch set to
  cnnvis's pass batch, its "equal settings"), cnnvis's speed-up over each and the smallest per-image
  Pearson correlation between the two libraries' maps;
- sweep: `cnnvis run -m technique=a,b,c` against three separate runs with the prediction cache off.
Random-initialised models (seed 0) at 224 px; the demo model with its trained weights on demo images.
Writes speed.json and speed.md into --out and prints the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cnnvis_cli.config import ModelConfig, TechniqueConfig
from cnnvis_cli.data import DemoSource, ImageFolderSource, SampleSet, make_loader
from cnnvis_cli.inference import normalise, predict, prediction_header
from cnnvis_cli.models import Preprocess, inspect_layers, load_model, resolve_target_layer
from cnnvis_cli.run_dir import CsvStream
from cnnvis_cli.techniques import TechniqueContext, build_technique
from cnnvis_cli.techniques.baselines import baseline_images

IMAGENET = Preprocess(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
GRAD_CAMS = ("gradcam", "gradcampp", "xgradcam", "hirescam", "layercam")
SECTIONS = ("limits", "inference", "techniques", "references", "sweep")


@dataclass
class Case:
    """One model under test, with its inputs."""

    name: str
    model: nn.Module
    layer: str
    preprocess: Preprocess
    images: torch.Tensor  # the fast techniques' batch
    few: torch.Tensor  # the many-pass techniques' batch
    source_images: list[np.ndarray] = field(default_factory=list)  # for the inference stage (demo only)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(work: Callable[[], object], device: torch.device, repeats: int, warm_up: bool = True) -> float:
    """The median of `repeats` timed runs after an untimed warm-up. With `warm_up=False` (work of hundreds of
    passes, whose first pass warms up the rest), a first run longer than LONG_RUN_SECONDS is taken as it is,
    and a shorter one serves as the warm-up."""
    if not warm_up:
        first = timed(work, device)
        if first > LONG_RUN_SECONDS:
            return first
    else:
        work()
    return statistics.median(timed(work, device) for _ in range(repeats))


LONG_RUN_SECONDS = 5.0


def timed(work: Callable[[], object], device: torch.device) -> float:
    synchronise(device)
    start = time.perf_counter()
    work()
    synchronise(device)
    return time.perf_counter() - start


def smallest_pearson(ours: torch.Tensor, theirs: torch.Tensor) -> float | None:
    """The smallest per-image correlation between two R x H x W stacks of maps (maps with content only)."""
    values = []
    for a, b in zip(ours.detach().float().cpu().numpy(), theirs.detach().float().cpu().numpy(), strict=True):
        if np.ptp(a) > 0 and np.ptp(b) > 0:
            values.append(float(np.corrcoef(a.ravel(), b.ravel())[0, 1]))
    return round(min(values), 4) if values else None


# --- limits ---------------------------------------------------------------------------------------------

def forward_only(model: nn.Module, images: torch.Tensor) -> None:
    with torch.inference_mode():
        model(images)


def forward_backward_to_layer(model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> None:
    """One forward and the backward from the target scores to the layer's output, nothing further."""
    kept: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        kept.append(output.detach().requires_grad_(True))
        return kept[-1]

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            scores = model(images).gather(1, targets[:, None]).sum()
            torch.autograd.grad(scores, kept)
    finally:
        handle.remove()


def forward_backward_to_input(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> None:
    inputs = images.detach().requires_grad_(True)
    with torch.enable_grad():
        torch.autograd.grad(model(inputs).gather(1, targets[:, None]).sum(), inputs)


class Limits:
    """Seconds per image of each limit, at the fast batch and at the pass batch (many-pass techniques),
    measured when first asked for: a fresh `Limits` per technique measures its limit just before it runs,
    so the machine's drift over a long benchmark does not enter the ratio."""

    def __init__(self, case: Case, targets: torch.Tensor, pass_batch: int, device: torch.device,
                 repeats: int) -> None:
        model, layer = case.model, dict(case.model.named_modules())[case.layer]
        batch = len(case.images)
        passes = case.images[torch.arange(pass_batch, device=device) % batch]
        pass_targets = targets[torch.arange(pass_batch, device=device) % batch]
        self.work: dict[str, tuple[Callable[[], None], int]] = {
            "forward": (lambda: forward_only(model, case.images), batch),
            "forward+layer backward": (lambda: forward_backward_to_layer(model, layer, case.images, targets), batch),
            "forward+input backward": (lambda: forward_backward_to_input(model, case.images, targets), batch),
            "pass forward": (lambda: forward_only(model, passes), pass_batch),
            "pass forward+input backward": (lambda: forward_backward_to_input(model, passes, pass_targets),
                                            pass_batch),
        }
        self.device, self.repeats = device, repeats
        self.measured: dict[str, float] = {}

    def __getitem__(self, name: str) -> float:
        if name not in self.measured:
            work, images = self.work[name]
            self.measured[name] = median_seconds(work, self.device, self.repeats) / images
        return self.measured[name]

    def all(self) -> dict[str, float]:
        return {name: self[name] for name in self.work}


# --- cnnvis techniques and their limits -----------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """A technique as benchmarked: its options, which batch it runs on, and its limit in passes."""

    technique: str
    label: str
    options: dict[str, Any]
    many: bool  # runs on the small batch, once
    limit: Callable[[Limits, int], float]  # (limits, channels scored) -> seconds per (image, target)
    compared: bool = True  # timed against the other libraries too


def settings(args: argparse.Namespace, size: int) -> list[Setting]:
    layer_pass = [Setting(name, name, {}, False, lambda lim, _k: lim["forward+layer backward"]) for name in GRAD_CAMS]
    input_pass = [Setting(name, name, {}, False, lambda lim, _k: lim["forward+input backward"])
                  for name in ("saliency", "gradient_x_input", "guided_backprop", "lrp")]
    windows = ((size - min(args.window, size)) // args.stride + 1) ** 2
    return [
        *layer_pass,
        Setting("eigencam", "eigencam", {}, False, lambda lim, _k: lim["forward"]),
        *input_pass,
        Setting("guided_gradcam", "guided_gradcam", {}, False,
                lambda lim, _k: lim["forward+layer backward"] + lim["forward+input backward"]),
        Setting("scorecam", "scorecam (all channels)", AUTHORS_SCORECAM, True,
                lambda lim, k: (1 + k) * lim["pass forward"]),
        Setting("scorecam", "scorecam max_channels=64", {"max_channels": 64, **AUTHORS_SCORECAM}, True,
                lambda lim, k: (1 + k) * lim["pass forward"]),
        Setting("scorecam", "scorecam (all channels) as run by default, with its baseline", {}, True,
                lambda lim, k: (2 + k) * lim["pass forward"], compared=False),
        Setting("ablationcam", "ablationcam (all channels)", {}, True, lambda lim, k: (1 + k) * lim["pass forward"]),
        Setting("integrated_gradients", f"integrated_gradients ({args.steps} steps)",
                {"integrated_gradients": {"steps": args.steps}}, True,
                lambda lim, _k: args.steps * lim["pass forward+input backward"]),
        Setting("saliency", f"smoothgrad ({args.samples} samples)", {"smooth": {"samples": args.samples}}, True,
                lambda lim, _k: args.samples * lim["pass forward+input backward"]),
        Setting("occlusion", f"occlusion ({windows} windows)",
                {"occlusion": {"window": args.window, "stride": args.stride}}, True,
                lambda lim, _k: (1 + windows) * lim["pass forward"]),
        Setting("rise", f"rise ({args.masks} masks)", {"rise": {"masks": args.masks}}, True,
                lambda lim, _k: args.masks * lim["pass forward"]),
    ]


# Score-CAM weighed as pytorch-grad-cam and torch-cam weigh it (no baseline), so that speed and agreement
# compare like with like; Score-CAM as run by default (one more forward pass per batch, for the input with
# nothing shown) is timed in a row of its own
AUTHORS_SCORECAM: dict[str, Any] = {"scorecam": {"subtract_baseline": False}}


def technique_config(options: dict[str, Any], pass_batch: int) -> TechniqueConfig:
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(OmegaConf.structured(TechniqueConfig), {"batch_size": pass_batch, **options})
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def build(setting: Setting, case: Case, pass_batch: int):
    config = technique_config(setting.options, pass_batch)
    context = TechniqueContext(case.model, [case.layer], config, False, case.preprocess.mean, case.preprocess.std)
    return build_technique(setting.technique, context)  # wrapped in SmoothGrad when the options ask


def channels_scored(case: Case, images: torch.Tensor, max_channels: int | None) -> int:
    """How many (image, channel) passes Score-CAM makes per image: active channels among those scored."""
    kept: list[torch.Tensor] = []
    handle = dict(case.model.named_modules())[case.layer].register_forward_hook(
        lambda _m, _i, output: kept.append(output.detach()))
    try:
        forward_only(case.model, images)
    finally:
        handle.remove()
    activation = kept[0]
    scored = min(max_channels or activation.shape[1], activation.shape[1])
    channels = activation.mean(dim=(2, 3)).topk(scored, dim=1).indices
    active = activation.flatten(2).abs().amax(dim=2).gather(1, channels) > 0
    return round(float(active.sum(dim=1).float().mean()))


# --- the other libraries --------------------------------------------------------------------------------

def references(technique: str, case: Case, pass_batch: int, args: argparse.Namespace) -> dict[str, Callable]:
    """For one cnnvis technique, each library's way to the same maps: library -> f(images, targets) ->
    R x H x W maps comparable with cnnvis's (CAMs: the map; signed methods: the sum over colour channels)."""
    found: dict[str, Callable] = {}
    for library in (lambda: _pytorch_grad_cam(technique, case), lambda: _torch_cam(technique, case),
                    lambda: _captum(technique, case, pass_batch, args)):
        with contextlib.suppress(ImportError):  # a library that is not installed is left out
            found.update(library())
    return found


def _upsampled(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    maps = F.relu(maps.float())
    if maps.ndim == 3:
        maps = maps[:, None]
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[:, 0]


def _pytorch_grad_cam(technique: str, case: Case) -> dict[str, Callable]:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    classes = {"gradcam": pgc.GradCAM, "gradcampp": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM,
               "hirescam": pgc.HiResCAM, "layercam": pgc.LayerCAM, "scorecam": pgc.ScoreCAM,
               "ablationcam": pgc.AblationCAM, "eigencam": pgc.EigenCAM}
    if technique not in classes:
        return {}
    layer = dict(case.model.named_modules())[case.layer]

    def run(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with classes[technique](model=case.model, target_layers=[layer]) as cam:
            maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        return torch.from_numpy(maps)

    return {"pytorch-grad-cam": run}


def _torch_cam(technique: str, case: Case) -> dict[str, Callable]:
    import torchcam.methods as tcm

    classes = {"gradcam": tcm.GradCAM, "gradcampp": tcm.GradCAMpp, "xgradcam": tcm.XGradCAM,
               "layercam": tcm.LayerCAM, "scorecam": tcm.ScoreCAM}
    if technique not in classes:
        return {}

    def run(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        extractor = classes[technique](case.model, target_layer=case.layer, input_shape=tuple(images.shape[1:]))
        try:
            with torch.set_grad_enabled(technique != "scorecam"):
                scores = case.model(images)
            maps = extractor(class_idx=[int(t) for t in targets], scores=scores)[0]
        finally:
            extractor.remove_hooks()
        return _upsampled(maps, images.shape[-2:])

    return {"torch-cam": run}


def _captum(technique: str, case: Case, pass_batch: int, args: argparse.Namespace) -> dict[str, Callable]:
    import captum.attr as ca

    model, layer = case.model, dict(case.model.named_modules())[case.layer]

    def signed(method: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable:
        return lambda images, targets: method(images, targets).sum(dim=1)

    def black(images: torch.Tensor) -> torch.Tensor:
        return baseline_images("black", images, case.preprocess.mean, case.preprocess.std)

    methods: dict[str, Callable] = {
        "gradcam": lambda x, t: _upsampled(ca.LayerGradCam(model, layer).attribute(x, target=t.tolist()),
                                           x.shape[-2:]),
        "saliency": lambda x, t: ca.Saliency(model).attribute(x, target=t.tolist()).amax(dim=1),
        "gradient_x_input": signed(lambda x, t: ca.InputXGradient(model).attribute(x, target=t.tolist())),
        "guided_backprop": signed(lambda x, t: ca.GuidedBackprop(model).attribute(x, target=t.tolist())),
        "integrated_gradients": signed(lambda x, t: ca.IntegratedGradients(model).attribute(
            x, baselines=black(x), target=t.tolist(), n_steps=args.steps, internal_batch_size=pass_batch)),
        # cnnvis averages the signed gradients (as the paper defines SmoothGrad) and takes |.| after
        "smoothgrad": lambda x, t: ca.NoiseTunnel(ca.Saliency(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=args.samples, nt_samples_batch_size=max(1, pass_batch // len(x)),
            stdevs=float(args.noise * (x.max() - x.min())), target=t.tolist(), abs=False).abs().amax(dim=1),
        "occlusion": signed(lambda x, t: ca.Occlusion(model).attribute(
            x, sliding_window_shapes=(3, args.window, args.window), strides=(3, args.stride, args.stride),
            baselines=0.0, target=t.tolist(), perturbations_per_eval=pass_batch)),  # the mean colour
    }
    return {"Captum": methods[technique]} if technique in methods else {}


def comparable(name: str, explanation) -> torch.Tensor:
    """cnnvis's maps in the form the references give: signed sums for signed methods, else the maps."""
    if explanation.signed is not None and name not in ("saliency", "smoothgrad"):  # these two: |gradient| maps
        return explanation.signed
    return explanation.maps


# --- sections -------------------------------------------------------------------------------------------

def run_techniques(case: Case, args: argparse.Namespace, device: torch.device, fast_targets: torch.Tensor,
                   with_references: bool) -> list[dict[str, Any]]:
    rows = []
    measured: dict[tuple[str, str], tuple[float, torch.Tensor]] = {}  # (technique, library) -> seconds, maps
    exact_scorecam = None
    for setting in settings(args, case.images.shape[-1]):
        if args.only and setting.technique not in args.only.split(","):
            continue
        images = case.few if setting.many else case.images
        with torch.no_grad():
            targets = case.model(images).argmax(dim=1)
        image_rows = torch.arange(len(images), device=device)
        technique = build(setting, case, args.pass_batch)
        repeats, warm_up = args.repeats, not setting.many
        explanation = None

        def work(technique=technique, images=images, image_rows=image_rows, targets=targets):
            nonlocal explanation
            explanation = technique.explain(images, image_rows, targets)

        scored = channels_scored(case, images, setting.options.get("max_channels")) \
            if setting.technique in ("scorecam", "ablationcam") else 0
        limits = Limits(case, fast_targets, args.pass_batch, device, args.repeats)
        limit = setting.limit(limits, scored)  # measured now, just before the technique
        seconds = median_seconds(work, device, repeats, warm_up) / len(images)
        row: dict[str, Any] = {"technique": setting.label, "seconds": seconds, "limit": limit,
                               "x_limit": seconds / limit, "limits measured": limits.measured, "references": {}}
        if scored:
            row["channels_scored"] = scored
        if setting.label == "scorecam (all channels)":
            exact_scorecam = explanation.maps
        elif "max_channels" in setting.options and exact_scorecam is not None:
            row["pearson_vs_exact"] = smallest_pearson(exact_scorecam, explanation.maps)
        if setting.technique in GRAD_CAMS:
            second = (targets + 1) % case.model(images[:1]).shape[1]
            two_rows, two_targets = torch.cat([image_rows, image_rows]), torch.cat([targets, second])
            two = median_seconds(lambda t=technique, x=images, r=two_rows, c=two_targets: t.explain(x, r, c),
                                 device, args.repeats) / len(images)
            row["two_targets_x_one"] = two / seconds
        if with_references and setting.compared:
            key = "smoothgrad" if setting.options.get("smooth") else setting.technique
            for library, reference in references(key, case, args.pass_batch, args).items():
                if (key, library) not in measured:  # Score-CAM's references run once for both settings
                    measured[key, library] = measure_reference(reference, images, targets, case.model, device,
                                                               repeats, warm_up)
                their_seconds, maps = measured[key, library]
                row["references"][library] = {"seconds": their_seconds, "speedup": their_seconds / seconds,
                                              "pearson": smallest_pearson(comparable(key, explanation), maps)}
        rows.append(row)
        print(technique_line(row), flush=True)
    return rows


def measure_reference(reference: Callable, images: torch.Tensor, targets: torch.Tensor, model: nn.Module,
                      device: torch.device, repeats: int, warm_up: bool) -> tuple[float, torch.Tensor]:
    """Seconds per image of another library's technique, and its maps."""
    maps = None

    def work() -> None:
        nonlocal maps
        maps = reference(images, targets)

    model.requires_grad_(True)  # as users hand their models to these libraries
    try:
        seconds = median_seconds(work, device, repeats, warm_up) / len(images)
    finally:
        model.requires_grad_(False)
    return seconds, maps


def exact_agreement(case: Case, args: argparse.Namespace) -> dict[str, float | None]:
    """Pearson of Score-CAM with max_channels=K against exact Score-CAM, on the few-image batch."""
    images = case.few
    with torch.no_grad():
        targets = case.model(images).argmax(dim=1)
    rows = torch.arange(len(images), device=images.device)
    exact_setting = Setting("scorecam", "", AUTHORS_SCORECAM, True, lambda *_: 0)
    exact = build(exact_setting, case, args.pass_batch).explain(images, rows, targets)
    agreement = {}
    for k in (16, 32, 64):
        fast_setting = Setting("scorecam", "", {"max_channels": k, **AUTHORS_SCORECAM}, True, lambda *_: 0)
        fast = build(fast_setting, case, args.pass_batch)
        agreement[f"max_channels={k}"] = smallest_pearson(exact.maps, fast.explain(images, rows, targets).maps)
    return agreement


def write_jpegs(folder: Path, count: int, seed: int = 0) -> None:
    """`count` smooth random photos-like JPEGs of 320 x 256 pixels in folder/class_N/."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        noise = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
        image = cv2.resize(noise, (320, 256), interpolation=cv2.INTER_CUBIC)
        target = folder / f"class_{index % 4}"
        target.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target / f"{index:05d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])


def inference_stage(case: Case, args: argparse.Namespace, device: torch.device, workdir: Path) -> dict[str, Any]:
    """cnnvis's inference stage against the bare forward at the same batch size."""
    if case.name == "demo":
        source = DemoSource("test", 0)
        count = min(args.inference_images * 4, len(source))
    else:
        folder = workdir / f"jpeg-{case.name}"
        if not folder.exists():
            write_jpegs(folder, args.inference_images)
        source = ImageFolderSource(folder, [".jpg"])
        count = len(source)
    batch = args.inference_batch
    example = torch.randn(batch, 3, case.preprocess.input_size, case.preprocess.input_size, device=device)
    bare = median_seconds(lambda: forward_only(case.model, example), device, args.repeats) / batch
    class_names = [f"class_{index}" for index in range(case.model(example[:1]).shape[1])]
    result: dict[str, Any] = {"images": count, "batch": batch, "bare forward images/s": 1 / bare}
    for workers in args.workers:
        def stage(workers=workers) -> None:
            samples = SampleSet(source, case.preprocess, range(count))
            loader = make_loader(samples, batch, workers, pin_memory=device.type == "cuda")
            with CsvStream(workdir / "predictions.csv", prediction_header(5, source.extra_columns)) as csv:
                predict(case.model, loader, case.preprocess, device, class_names=class_names, topk=5, csv=csv,
                        extra_columns=source.extra_columns, total=count, show_progress=False,
                        sample_id=source.sample_id)

        seconds = median_seconds(stage, device, max(1, args.repeats - 1))
        result[f"workers={workers}"] = {"images/s": count / seconds, "x_bare_forward": (count / seconds) * bare}
        print(f"  inference stage, {workers} workers: {count / seconds:.1f} images/s, "
              f"{(count / seconds) * bare:.2f}x the bare forward's {1 / bare:.1f}", flush=True)
    return result


def sweep(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """`cnnvis run -m technique=a,b,c` with the prediction cache, against three runs without it."""
    folder = workdir / "jpeg-sweep"
    if not folder.exists():
        write_jpegs(folder, args.sweep_images)
    techniques = ["gradcam", "gradcampp", "eigencam"]
    common = ["model=resnet18", "model.weights=null", "dataset=imagefolder", f"dataset.root={folder}",
              "selection.max_samples=4", "render.panels=false", "report=false", "progress=false"]
    command = [sys.executable, "-m", "cnnvis_cli", "run"]
    env = {**os.environ, "CNNVIS_CACHE": str(workdir / "cache")}

    def timed(arguments: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(command + arguments, check=True, env=env, cwd=workdir, capture_output=True)
        return time.perf_counter() - start

    separate = sum(timed([f"technique={name}", "cache=null", *common]) for name in techniques)
    swept = timed(["-m", f"technique={','.join(techniques)}", *common])
    result = {"images": args.sweep_images, "techniques": techniques, "three separate runs s": separate,
              "sweep s": swept, "separate / sweep": separate / swept}
    print(f"sweep of {len(techniques)} techniques over {args.sweep_images} JPEGs (resnet18): {swept:.1f} s; "
          f"three separate runs without the cache: {separate:.1f} s ({separate / swept:.2f}x)", flush=True)
    return result


# --- output ---------------------------------------------------------------------------------------------

LIBRARIES = ("pytorch-grad-cam", "torch-cam", "Captum")


def technique_line(row: dict[str, Any]) -> str:
    label = row["technique"]
    if "channels_scored" in row:
        label += f", {row['channels_scored']} active channels scored"
    if "pearson_vs_exact" in row:
        label += f", r {row['pearson_vs_exact']} with exact"
    cells = [label, f"{row['seconds']:.4g}", f"{row['limit']:.4g}", f"{row['x_limit']:.2f}",
             f"{row['two_targets_x_one']:.2f}" if "two_targets_x_one" in row else ""]
    for library in LIBRARIES:
        found = row["references"].get(library)
        cells.append("" if found is None else
                     f"{found['seconds']:.4g} ({found['speedup']:.1f}x, r {found['pearson']})")
    return "| " + " | ".join(cells) + " |"


TECHNIQUE_HEADER = ("| technique | cnnvis s per (image, target) | limit s | x limit | 2 targets / 1 | "
                    + " | ".join(f"{library} s (cnnvis speed-up, Pearson)" for library in LIBRARIES) + " |")


def markdown(results: dict[str, Any]) -> str:
    lines = [f"{results['machine']}; torch {results['versions']['torch']}, "
             f"torchvision {results['versions']['torchvision']}", f"`{results['command']}`", ""]
    for name, model in results["models"].items():
        images = f"{model['few']} image" + ("s" if model["few"] != 1 else "")
        lines.append(f"### {name}: batch {model['batch']} (many-pass techniques: {images}, "
                     f"{model['pass_batch']} inputs per pass)")
        if "limits" in model:
            lines.append("limits, s per image: " + ", ".join(f"{key} {value:.4g}"
                                                            for key, value in model["limits"].items()))
        if "inference" in model:
            stage = model["inference"]
            lines.append(f"inference stage over {stage['images']} images, batch {stage['batch']}: " + ", ".join(
                f"{key} {value['images/s']:.1f} images/s ({value['x_bare_forward']:.2f}x the bare forward)"
                for key, value in stage.items() if key.startswith("workers=")))
        if "scorecam_agreement" in model:
            lines.append("Score-CAM with max_channels=K against exact, smallest per-image Pearson: " + ", ".join(
                f"{key} {value}" for key, value in model["scorecam_agreement"].items()))
        if "techniques" in model:
            lines += ["", TECHNIQUE_HEADER, "|---" * TECHNIQUE_HEADER.count(" | ") + "|---|"]
            lines += [technique_line(row) for row in model["techniques"]]
        lines.append("")
    if "sweep" in results:
        sweep_result = results["sweep"]
        lines.append(f"Sweep `-m technique={','.join(sweep_result['techniques'])}` over {sweep_result['images']} "
                     f"JPEGs with resnet18: {sweep_result['sweep s']:.1f} s; three separate runs without the cache: "
                     f"{sweep_result['three separate runs s']:.1f} s ({sweep_result['separate / sweep']:.2f}x).")
    return "\n".join(lines) + "\n"


# --- models ---------------------------------------------------------------------------------------------

def make_case(name: str, args: argparse.Namespace, device: torch.device) -> Case:
    torch.manual_seed(0)
    if name == "demo":
        loaded = load_model(ModelConfig(name="demo", source="demo"))
        model, layer, preprocess = loaded.module.to(device), loaded.target_layer, loaded.preprocess
        source = DemoSource("test", 0)
        samples = SampleSet(source, preprocess, range(max(args.batch_for(name), args.few)))
        pixels = torch.stack([samples[index][0] for index in range(len(samples))]).to(device)
        images = normalise(pixels, preprocess)
    else:
        model = torchvision.models.get_model(name, weights=None).eval().requires_grad_(False).to(device)
        layer = resolve_target_layer(model, None, inspect_layers(model, 224)[0])
        preprocess = IMAGENET
        images = torch.randn(max(args.batch_for(name), args.few), 3, 224, 224, device=device)
    return Case(name, model, layer, preprocess, images[:args.batch_for(name)], images[:args.few])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,vgg16,demo")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"any of {', '.join(SECTIONS)}")
    parser.add_argument("--only", default="", help="comma-separated cnnvis technique names (default: all)")
    parser.add_argument("--batch", default="resnet18=8,vgg16=4,demo=32", help="fast techniques' batch per model")
    parser.add_argument("--few", type=int, default=1, help="images for the many-pass techniques")
    parser.add_argument("--pass-batch", type=int, default=None,
                        help="inputs per forward pass (technique.batch_size); default: cnnvis's, 64 on CUDA, 8 on CPU")
    parser.add_argument("--steps", type=int, default=50, help="integrated gradients")
    parser.add_argument("--samples", type=int, default=25, help="SmoothGrad")
    parser.add_argument("--noise", type=float, default=0.15, help="SmoothGrad")
    parser.add_argument("--window", type=int, default=32, help="occlusion")
    parser.add_argument("--stride", type=int, default=16, help="occlusion")
    parser.add_argument("--masks", type=int, default=2000, help="RISE")
    parser.add_argument("--inference-images", type=int, default=256)
    parser.add_argument("--inference-batch", type=int, default=32)
    parser.add_argument("--workers", default="0,2", help="DataLoader workers to try in the inference stage")
    parser.add_argument("--sweep-images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="outputs/benchmarks")
    args = parser.parse_args()
    batches = dict(item.split("=") for item in args.batch.split(","))
    args.batch_for = lambda name: int(batches.get(name, 8))
    args.workers = [int(w) for w in args.workers.split(",")]
    sections = set(args.sections.split(","))
    device = torch.device(args.device)
    args.pass_batch = args.pass_batch or (64 if device.type == "cuda" else 8)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    results: dict[str, Any] = {
        "machine": f"{device.type} ({card}), {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads",
        "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:]),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, **library_versions()},
        "models": {},
    }
    print(results["machine"], results["versions"], flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        for name in args.models.split(","):
            case = make_case(name, args, device)
            model_result: dict[str, Any] = {"batch": len(case.images), "few": len(case.few),
                                            "pass_batch": args.pass_batch, "layer": case.layer}
            results["models"][name] = model_result
            print(f"\n{name} ({case.layer}), batch {len(case.images)}", flush=True)
            with torch.no_grad():
                targets = case.model(case.images).argmax(dim=1)
            limits = Limits(case, targets, args.pass_batch, device, args.repeats).all()
            model_result["limits"] = limits
            print("  limits, s per image: " + ", ".join(f"{k} {v:.4g}" for k, v in limits.items()), flush=True)
            if "inference" in sections:
                model_result["inference"] = inference_stage(case, args, device, workdir)
            if "techniques" in sections or "references" in sections:
                print(TECHNIQUE_HEADER, flush=True)
                model_result["techniques"] = run_techniques(case, args, device, targets, "references" in sections)
            if name == "demo" and "techniques" in sections and (not args.only or "scorecam" in args.only):
                model_result["scorecam_agreement"] = exact_agreement(case, args)
                print(f"  Score-CAM max_channels=K vs exact: {model_result['scorecam_agreement']}", flush=True)
            (out / "speed.json").write_text(json.dumps(results, indent=2) + "\n")
        if "sweep" in sections:
            results["sweep"] = sweep(args, workdir)
    (out / "speed.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "speed.md").write_text(markdown(results))
    print(f"\nwrote {out / 'speed.json'} and {out / 'speed.md'}")


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("grad-cam", "torchcam", "captum", "cnnvis"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


if __name__ == "__main__":
    main()
