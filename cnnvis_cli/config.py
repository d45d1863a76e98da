"""Typed schema of a run's configuration, and its validation.

Hydra composes YAML files from `conf/` into a DictConfig; `parse_run_config` checks it against these
dataclasses (an unknown key or a value of the wrong type is an error) and against the rules on values that
types cannot say (ranges, choices), and returns a plain `RunConfig`. This module is the bottom layer: it
imports no stage and no registry (`checks.py`, above them, checks the names they know). Nothing here
imports Hydra.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from cnnvis_cli.errors import UserError, close_matches, first_line

DEVICES = ("auto", "cpu", "cuda", "mps")
STDOUT_MODES = ("path", "jsonl")
SELECTION_MODES = ("any", "all")
SELECTION_ORDERS = ("least_confident", "highest_loss", "random")
COLORMAPS = (  # OpenCV's colormaps, by the lower-case name of their cv2.COLORMAP_ constant
    "autumn", "bone", "jet", "winter", "rainbow", "ocean", "summer", "spring", "cool", "hsv", "pink",
    "hot", "parula", "magma", "inferno", "plasma", "viridis", "cividis", "twilight", "twilight_shifted",
    "turbo", "deepgreen",
)
BASELINES = ("black", "mean", "blurred", "noise")  # integrated gradients' baseline, occlusion's fill
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "nearest-exact")  # torchvision's InterpolationMode values


@dataclass
class ModelConfig:
    """Which network to explain and how to feed it."""

    name: str = MISSING  # a torchvision architecture, or the name of a custom or demo model
    source: str = "torchvision"  # torchvision | custom | demo
    weights: str | None = None  # DEFAULT, a weights enum name such as IMAGENET1K_V1, or null
    checkpoint: str | None = None  # a state dict: .pt / .pth (loaded with weights_only) or .safetensors
    num_classes: int | None = None
    class_names: Any = None  # a list of names, "imagenet", "dataset", or null (from the weights)
    target_layer: str | None = None  # null: the last layer whose output is a spatial feature map
    factory: str | None = None  # custom: "package.module:callable" returning an nn.Module
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: int | None = None  # side of the square crop fed to the model
    resize_size: int | None = None  # shorter side before the centre crop
    interpolation: str | None = None  # resize: bilinear | bicubic | nearest | nearest-exact; null: the model's own
    mean: list[float] | None = None
    std: list[float] | None = None
    channels_last: bool | None = None  # store feature maps channels-last; null: on the CPU for the zoo's convnets



@dataclass
class DatasetConfig:
    """Which test set to run over."""

    name: str = "demo"  # demo | imagefolder | files | cifar10 | fashion_mnist | imagenette
    root: str | None = None
    split: str = "test"
    download: bool = False
    extensions: list[str] = field(default_factory=lambda: list(IMAGE_EXTENSIONS))
    list_file: str | None = None  # files: one "path" or "path,label" per line; "-" reads standard input
    boxes: str | None = None  # a CSV file path,x0,y0,x1,y1 of object boxes (pointing and energy metrics)
    class_names: list[str] | None = None  # files: the label names, in index order
    size: str = "full"  # imagenette: full | 320px | 160px
    limit: int | None = None  # a seeded random subset of this many samples
    batch_size: int = 32
    num_workers: int | None = None  # DataLoader worker processes; null: one per spare CPU core, at most 4
    seed: int = 0


@dataclass
class SelectionConfig:
    """Which predictions deserve a heatmap."""

    criteria: list[str] = field(default_factory=lambda: ["incorrect", "low_confidence"])
    mode: str = "any"  # any | all
    threshold: float = 0.5  # low_confidence: top-1 probability below this
    margin: float = 0.1  # low_margin: top-1 minus top-2 probability below this
    entropy: float = 0.5  # high_entropy: entropy / log(classes) above this
    topk: int = 5  # label_not_in_topk
    max_samples: int | None = 200
    per_class_max: int | None = None
    order: str = "least_confident"  # least_confident | highest_loss | random
    seed: int = 0


@dataclass
class IntegratedGradientsConfig:
    steps: int = 50  # Gauss-Legendre nodes on the path from the baseline to the image
    baseline: str = "black"  # black | mean | blurred | noise


@dataclass
class SmoothConfig:
    samples: int = 0  # SmoothGrad: noisy copies per image for every gradient technique; 0 = off
    noise: float = 0.15  # noise standard deviation, as a fraction of the image's value range


@dataclass
class OcclusionConfig:
    window: int = 32  # side of the square window, in pixels of the model's input
    stride: int = 16  # pixels between window positions
    fill: str = "mean"  # mean (the grey square of the paper) | black | blurred | noise


@dataclass
class RiseConfig:
    masks: int = 2000  # random masks per image
    grid: int = 7  # cells per side of a mask before upsampling
    keep: float = 0.5  # probability that a cell is kept


@dataclass
class ScoreCamConfig:
    subtract_baseline: bool = True  # the paper's increase of confidence; false: the probability (authors' code)


@dataclass
class LrpConfig:
    epsilon: float = 0.25  # stabiliser of the epsilon rule: larger keeps only the strongest relevance


@dataclass
class FlipConfig:
    norm: str = "l2"  # l2 | linf: how the size of the change is measured
    budget: float | None = None  # null: 3.0 (L2, at 224 x 224 px, scaled with the side) or 8/255 (L-inf)
    steps: int = 50  # PGD steps; a row stops at the first that flips it


@dataclass
class TechniqueConfig:
    """Which explanation methods to run, and their options."""

    methods: dict[str, bool] = field(default_factory=dict)  # filled by the technique option files
    layers: list[str] | None = None  # CAMs: these layers, averaged, instead of the model's target layer
    batch_size: int | None = None  # many-pass methods: inputs per forward pass; null: 64 on a GPU, 8 on a CPU
    max_channels: int | None = None  # Score-/Ablation-CAM: score only the K channels with the largest mean activation
    integrated_gradients: IntegratedGradientsConfig = field(default_factory=IntegratedGradientsConfig)
    smooth: SmoothConfig = field(default_factory=SmoothConfig)
    occlusion: OcclusionConfig = field(default_factory=OcclusionConfig)
    rise: RiseConfig = field(default_factory=RiseConfig)
    scorecam: ScoreCamConfig = field(default_factory=ScoreCamConfig)
    lrp: LrpConfig = field(default_factory=LrpConfig)
    flip: FlipConfig = field(default_factory=FlipConfig)


@dataclass
class RenderConfig:
    """How heatmaps are drawn over the image."""

    colormap: str = "jet"
    alpha: float = 0.5  # weight of the heatmap in the overlay
    panels: bool = True  # one picture per selected sample: overlays, zooms, top guesses
    zoom: bool = True  # panels: beside each overlay, the original cut to the box the map points at
    zoom_threshold: float = 0.5  # the box holds the map at or above this share of its peak
    topn: int = 10  # panels: the model's top guesses in the bar chart
    panel_size: int = 224  # panels: pixels per side of each picture
    threads: int | None = None  # drawing, PNG encoding and writing beside the model; null: one per core, 2 to 4


@dataclass
class CounterfactualConfig:
    """metrics=[counterfactual]: each wrong prediction predicted again with its map's region hidden."""

    fill: str = "blurred"  # what hides a region: blurred | mean (colour) | black | noise (technique.occlusion.fill's)
    top_percent: float = 10.0  # the second region: the map's highest pixels, this percent of the image
    draws: int = 5  # the control: random regions of the same shape hidden per map


VISUALISE_KINDS = ("classes", "channels", "neurons", "dream", "invert")


@dataclass
class VisualiseConfig:
    """`cnnvis visualise`: images optimised to drive classes, channels or neurons (Olah et al., 2017)."""

    what: str = "classes"  # classes | channels | neurons | dream | invert
    layer: str | None = None  # channels, neurons, dream: a layer of `cnnvis list layers`; null: the target layer
    units: list[str] = field(default_factory=list)  # class names or indices, or channel indices; []: every class
    # (the first 16), the layer's first 8 channels, or (dream) the whole layer
    layers: list[str] = field(default_factory=list)  # invert: the layers; []: 6 spread from first to last
    image: str | None = None  # dream, invert: an image file; null: the test set's first image
    images_per_unit: int = 1  # more than 1: different images per unit, pushed apart by the diversity term
    diversity: float = 1.0  # weight of the diversity term
    steps: int | None = None  # null: 256 Adam steps (classes, channels, neurons), 400 (invert), 10 per octave (dream)
    lr: float = 0.05
    size: int | None = None  # pixels per side; null: the model's input size
    jitter: float = 12.0  # random shift per step, in pixels at 224 px (scaled with the size)
    scale: list[float] = field(default_factory=lambda: [0.9, 1.1])  # random scale per step: low, high
    rotate: float = 10.0  # random rotation per step, in degrees either way
    fourier: bool = True  # the image as a 1/f-scaled Fourier spectrum; false: plain pixels
    decorrelate: bool = True  # colours through ImageNet's colour correlation; false: plain RGB
    reference: int = 256  # test-set images that show what real images reach (each objective's 99th percentile)
    checks: int = 32  # random transformations under which each class image is classified again
    octaves: int = 4  # dream: scales, each octave_scale times the last
    octave_scale: float = 1.4
    alpha_norm: float = 0.01  # invert: weight of the alpha-norm (a = 6) regulariser
    total_variation: float = 0.01  # invert: weight of the total variation (b = 2) regulariser


@dataclass
class RunConfig:
    """Everything one run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    technique: TechniqueConfig = field(default_factory=TechniqueConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    device: str = "auto"
    amp: bool = False
    seed: int = 0
    topk: int = 5  # top-k classes written per sample in predictions.csv
    targets: list[str] = field(default_factory=lambda: ["pred", "true"])
    report: bool = True  # write report.html into the run directory
    strict: bool = False  # stop at the first unreadable image instead of skipping and recording it
    resume: str | None = None  # a run directory to finish: its predictions and written files are reused
    cache: str | None = "~/.cache/cnnvis"  # reuse the predictions of an earlier identical inference; null: off
    explain_batch_size: int = 16  # images per batch in the explanation stage
    metrics: list[str] = field(default_factory=list)  # heatmap metrics: deletion, insertion, drop,
    # pointing, energy, counterfactual
    metrics_steps: int = 20  # deletion and insertion: points on each curve after the start
    counterfactual: CounterfactualConfig = field(default_factory=CounterfactualConfig)
    analysis: list[str] = field(default_factory=list)  # what the failures share: groups, confusions, classes,
    # slices, channels
    analysis_groups: int | None = None  # groups of maps; null: chosen by silhouette from 2 to 8
    sanity: bool = False  # model-parameter randomisation test of every technique (sanity.csv, report)
    sanity_samples: int = 16  # selected samples the sanity check explains
    sanity_stages: int = 5  # cascade stages, from the top layer down to every layer
    sanity_label_model: str | None = None  # the same model trained on shuffled labels: the label test
    save_maps: bool = False
    stdout: str = "path"  # path: print the run directory; jsonl: one JSON object per selected sample
    progress: bool = True
    devices: int = 1  # processes this run spawns on this machine, one per GPU (or CPU share); see world.py
    rank_timeout: float = 60.0  # seconds without a heartbeat after which a run over many processes stops
    visualise: VisualiseConfig = field(default_factory=VisualiseConfig)  # `cnnvis visualise`

    @property
    def techniques(self) -> list[str]:
        return [name for name, enabled in self.technique.methods.items() if enabled]


def parse_run_config(cfg: DictConfig | dict[str, Any]) -> RunConfig:
    """Check a composed config against the schema and the rules on its values (ranges, choices), with `~`
    expanded in every path; raise UserError on the first mistake. The names that registries know (techniques,
    metrics, ...) are checked above this module, by `checks.load_run_config`."""
    schema = OmegaConf.structured(RunConfig)
    try:
        missing = sorted(OmegaConf.missing_keys(cfg))  # before merging: merge keeps the schema's default
        if missing:
            raise UserError(f"{missing[0]} needs a value; set it on the command line: {missing[0]}=...")
        merged = OmegaConf.merge(schema, cfg)
        run_config: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except ConfigKeyError as error:
        raise unknown_key(str(error.full_key or error.key)) from error
    except ValidationError as error:
        raise UserError(f"invalid value for '{error.full_key}': {first_line(error.msg)}") from error
    except OmegaConfBaseException as error:
        raise UserError(f"invalid configuration: {first_line(str(error))}") from error
    # YAML and Hydra read a bare `true` as a boolean, which the schema turns into "True"
    run_config.targets = ["true" if target == "True" else target for target in run_config.targets]
    check_values(run_config)
    expand_paths(run_config)
    return run_config


PATH_KEYS = ("model.checkpoint", "dataset.root", "dataset.list_file", "dataset.boxes", "resume", "cache",
             "sanity_label_model")


def expand_paths(cfg: RunConfig) -> None:
    """`~` and `~user` at the start of every path key become the home folder, as a shell would expand them."""
    for key in PATH_KEYS:
        owner, _, name = key.rpartition(".")
        holder = getattr(cfg, owner) if owner else cfg
        value = getattr(holder, name)
        if isinstance(value, str) and value.startswith("~"):
            setattr(holder, name, os.path.expanduser(value))


def _check_visualise(cfg: VisualiseConfig) -> None:
    _check_choice("visualise.what", cfg.what, VISUALISE_KINDS)
    if len(cfg.scale) != 2 or not 0 < cfg.scale[0] <= cfg.scale[1]:
        raise UserError(f"visualise.scale={list(cfg.scale)} must be [low, high] with 0 < low <= high, e.g. [0.9,1.1]")
    if cfg.lr <= 0:
        raise UserError(f"visualise.lr={cfg.lr} must be positive, e.g. 0.05")
    if cfg.size is not None and cfg.size < 16:
        raise UserError(f"visualise.size={cfg.size} must be at least 16 pixels, or null for the model's input size")
    if cfg.octave_scale < 1:
        raise UserError(f"visualise.octave_scale={cfg.octave_scale} must be at least 1, e.g. 1.4")
    for key, value in (("visualise.jitter", cfg.jitter), ("visualise.alpha_norm", cfg.alpha_norm),
                       ("visualise.total_variation", cfg.total_variation), ("visualise.rotate", cfg.rotate),
                       ("visualise.diversity", cfg.diversity), ("visualise.reference", cfg.reference),
                       ("visualise.checks", cfg.checks)):
        if value < 0:
            raise UserError(f"{key}={value} must be 0 or more")


def check_values(cfg: RunConfig) -> None:
    """The rules on values that a schema cannot express: ranges and choices."""
    _check_choice("device", cfg.device, DEVICES)
    _check_choice("stdout", cfg.stdout, STDOUT_MODES)
    _check_visualise(cfg.visualise)
    _check_choice("technique.flip.norm", cfg.technique.flip.norm, ("l2", "linf"))
    if cfg.technique.flip.budget is not None and cfg.technique.flip.budget <= 0:
        raise UserError(f"technique.flip.budget={cfg.technique.flip.budget} must be positive, or null for the default")
    _check_choice("selection.mode", cfg.selection.mode, SELECTION_MODES)
    _check_choice("selection.order", cfg.selection.order, SELECTION_ORDERS)
    _check_choice("render.colormap", cfg.render.colormap, COLORMAPS)
    if not cfg.selection.criteria:
        raise UserError("selection.criteria is empty; name at least one, e.g. selection.criteria=[incorrect]")
    if not cfg.techniques:
        raise UserError("no technique selected; choose one, e.g. technique=gradcam")
    for key, value in (
        ("selection.threshold", cfg.selection.threshold),
        ("selection.margin", cfg.selection.margin),
        ("selection.entropy", cfg.selection.entropy),
        ("render.alpha", cfg.render.alpha),
        ("technique.rise.keep", cfg.technique.rise.keep),
        ("render.zoom_threshold", cfg.render.zoom_threshold),
    ):
        if not 0.0 <= value <= 1.0:
            raise UserError(f"{key}={value} is outside [0, 1]; choose a value between 0 and 1")
    for key, value in (
        ("dataset.batch_size", cfg.dataset.batch_size),
        ("explain_batch_size", cfg.explain_batch_size),
        ("devices", cfg.devices),
        ("topk", cfg.topk),
        ("selection.topk", cfg.selection.topk),
        ("technique.integrated_gradients.steps", cfg.technique.integrated_gradients.steps),
        ("technique.occlusion.window", cfg.technique.occlusion.window),
        ("technique.occlusion.stride", cfg.technique.occlusion.stride),
        ("technique.rise.masks", cfg.technique.rise.masks),
        ("technique.rise.grid", cfg.technique.rise.grid),
        ("render.topn", cfg.render.topn),
        ("metrics_steps", cfg.metrics_steps),
        ("counterfactual.draws", cfg.counterfactual.draws),
        ("sanity_samples", cfg.sanity_samples),
        ("sanity_stages", cfg.sanity_stages),
        ("rank_timeout", cfg.rank_timeout),
        ("visualise.images_per_unit", cfg.visualise.images_per_unit),
        ("visualise.steps", cfg.visualise.steps or 1),
        ("visualise.octaves", cfg.visualise.octaves),
        ("technique.flip.steps", cfg.technique.flip.steps),
    ):
        if value < 1:
            raise UserError(f"{key}={value} must be at least 1")
    for key, optional in (
        ("dataset.limit", cfg.dataset.limit),
        ("selection.max_samples", cfg.selection.max_samples),
        ("selection.per_class_max", cfg.selection.per_class_max),
        ("technique.max_channels", cfg.technique.max_channels),
        ("analysis_groups", cfg.analysis_groups),
    ):
        if optional is not None and optional < 1:
            raise UserError(f"{key}={optional} must be at least 1, or null for no limit")
    for key, size in (("model.input_size", cfg.model.input_size), ("model.resize_size", cfg.model.resize_size),
                      ("model.num_classes", cfg.model.num_classes)):
        if size is not None and size < 1:
            raise UserError(f"{key}={size} must be at least 1, or null for the model's own")
    _check_choice("technique.integrated_gradients.baseline", cfg.technique.integrated_gradients.baseline, BASELINES)
    _check_choice("technique.occlusion.fill", cfg.technique.occlusion.fill, BASELINES)
    _check_choice("counterfactual.fill", cfg.counterfactual.fill, BASELINES)
    if not 0 < cfg.counterfactual.top_percent < 100:
        raise UserError(f"counterfactual.top_percent={cfg.counterfactual.top_percent} must lie between 0 and 100 "
                        "(the share of the map's pixels hidden, in percent), e.g. 10")
    if cfg.model.interpolation is not None:
        _check_choice("model.interpolation", cfg.model.interpolation, INTERPOLATIONS)
    for key, value in (("technique.smooth.samples", cfg.technique.smooth.samples),
                       ("technique.smooth.noise", cfg.technique.smooth.noise)):
        if value < 0:
            raise UserError(f"{key}={value} must be 0 or more")
    if cfg.technique.rise.keep == 0:
        raise UserError("technique.rise.keep=0 keeps no cell; choose a value in (0, 1], e.g. 0.5")
    if cfg.render.threads is not None and cfg.render.threads < 0:
        raise UserError(f"render.threads={cfg.render.threads} cannot be negative; use 0 to draw in the main thread "
                        "or null for one thread per core")
    if cfg.render.panel_size < 64:
        raise UserError(f"render.panel_size={cfg.render.panel_size} is too small to read; use 64 or more")
    if cfg.technique.lrp.epsilon <= 0:
        raise UserError(f"technique.lrp.epsilon={cfg.technique.lrp.epsilon} must be above 0, e.g. 0.25")
    if cfg.technique.batch_size is not None and cfg.technique.batch_size < 1:
        raise UserError(f"technique.batch_size={cfg.technique.batch_size} must be at least 1, or null for the "
                        "device's default (64 on a GPU, 8 on a CPU)")
    if cfg.dataset.num_workers is not None and cfg.dataset.num_workers < 0:
        raise UserError(f"dataset.num_workers={cfg.dataset.num_workers} must be 0 or more")
    if not cfg.targets:
        raise UserError("targets is empty; use for example targets=[pred,true]")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        matches = close_matches(value, choices)
        hint = f"did you mean {', '.join(matches)}?" if matches else f"choose one of {', '.join(choices)}"
        raise UserError(f"{key}={value} is not valid; {hint}")


def unknown_key(full_key: str) -> UserError:
    """A UserError for a config key the schema does not have, suggesting the closest known keys."""
    parent_key, _, key = full_key.rpartition(".")
    node: Any = OmegaConf.structured(RunConfig)
    for part in parent_key.split(".") if parent_key else []:
        node = node.get(part) if isinstance(node, DictConfig) else None
    known = list(node.keys()) if isinstance(node, DictConfig) else []
    matches = close_matches(str(key), known)
    hint = f"did you mean {', '.join(f'{parent_key}.{m}' if parent_key else m for m in matches)}?" if matches else (
        f"known keys: {', '.join(known)}" if known else "check its spelling"
    )
    return UserError(f"unknown config key '{full_key}'; {hint}")

