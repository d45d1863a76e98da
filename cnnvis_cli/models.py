"""Load the network to explain: a torchvision model, a user's checkpoint, any callable, or the demo.

Whatever its source, a model arrives as a `LoadedModel`: the module in eval mode with frozen parameters,
how to preprocess images for it, its class names when it knows them, and the layer CAMs should look at.
"""

from __future__ import annotations

import importlib
import logging
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnvis_cli.config import ModelConfig
from cnnvis_cli.errors import UserError, first_line, unknown_name
from cnnvis_cli.layouts import NCHW, Layout, is_attention, layout_of, model_prefix_tokens

log = logging.getLogger("cnnvis")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side, centre-crop a square, then normalise channels (on the device): torchvision's
    `Resize(resize_size, interpolation, antialias=True)`, `CenterCrop(input_size)` and `Normalize(mean, std)`."""

    resize_size: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # one of config.INTERPOLATIONS


@dataclass(frozen=True)
class LayerInfo:
    """A module of the model whose output is a spatial feature map (N x C x H x W, H and W > 1)."""

    name: str
    kind: str
    shape: tuple[int, ...]  # of its last call's output
    calls: int = 1  # how often one forward pass calls it (a shared activation module: several times)
    layout: Layout = Layout(NCHW)  # how its output holds the grid; `shape` is the grid's C x H x W
    output_shape: tuple[int, ...] = ()  # of the output itself (tokens: L x C)
    reaches_output: bool | None = None  # its grid gets gradient from the class scores (checked with attention)
    embedding: bool = False  # it runs before the model's first attention: the patch embedding


@dataclass
class LoadedModel:
    """A network ready to be explained."""

    module: nn.Module
    name: str
    preprocess: Preprocess
    class_names: list[str] | None
    num_classes: int
    target_layer: str
    layers: list[LayerInfo]  # every layer with a spatial output, in the order they run
    class_names_from_dataset: bool = False


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Build the model that `cfg` describes, freeze it, and find its target layer."""
    if cfg.source == "torchvision":
        module, preprocess, class_names = _torchvision_model(cfg)
    elif cfg.source == "custom":
        module, preprocess, class_names = _custom_model(cfg)
    elif cfg.source == "demo":
        module, preprocess, class_names = _demo_model(cfg)
    elif cfg.source == "timm":
        module, preprocess, class_names = _timm_model(cfg)
    else:
        raise unknown_name("model.source", cfg.source, ("torchvision", "timm", "custom", "demo"))
    if cfg.checkpoint:
        _load_state_dict(module, read_checkpoint(Path(cfg.checkpoint).expanduser()), cfg.checkpoint)
    module.eval().requires_grad_(False)
    layers, num_classes = inspect_layers(module, preprocess.input_size)
    target_layer = resolve_target_layer(module, cfg.target_layer, layers)
    from_dataset = cfg.class_names == "dataset"
    if class_names is not None and len(class_names) != num_classes:
        raise UserError(
            f"model '{cfg.name}' has {num_classes} outputs but {len(class_names)} class names; "
            "make model.class_names match model.num_classes"
        )
    return LoadedModel(module, cfg.name, preprocess, class_names, num_classes, target_layer, layers, from_dataset)


def place_model(model: LoadedModel, device: torch.device, cfg: ModelConfig) -> None:
    """Move the model to `device`, its weights stored channels-last (NHWC) when `model.channels_last` asks,
    or, when it is null, where that measured faster: on the CPU, for a convolutional network of the zoo or the
    demo without LayerNorm (1.2x to 1.8x faster passes; benchmarks/memory_layout.py). LayerNorm networks
    (ConvNeXt, Swin, ViT) gained 0 to 8%; a custom model's own code may `.view()` a feature map, which
    channels-last storage refuses, so it keeps the default unless asked."""
    channels_last = cfg.channels_last
    if channels_last is None:
        channels_last = device.type == "cpu" and cfg.source != "custom" and not any(
            isinstance(module, nn.LayerNorm) for module in model.module.modules())
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model.module.to(device, memory_format=layout)


def check_model_keys(cfg: ModelConfig) -> None:
    """Every model source honours every model key or refuses it: a key that a source would ignore is a
    mistake, said before any work."""
    refusals = []
    if cfg.source != "custom" and cfg.factory:
        refusals.append(("model.factory", "it is for model=custom"))
    if cfg.source not in ("custom", "timm") and cfg.kwargs:
        refusals.append(("model.kwargs", "it is for model=custom and model=timm"))
    if cfg.source == "custom" and cfg.weights:
        refusals.append(("model.weights", "a custom model gets its weights from its factory or model.checkpoint"))
    if cfg.source == "demo":
        from cnnvis_cli.demo.scene import CLASS_NAMES

        if cfg.weights:
            refusals.append(("model.weights", "the demo model's weights are its own; model.checkpoint=PATH replaces "
                                              "them"))
        if cfg.num_classes not in (None, len(CLASS_NAMES)):
            refusals.append(("model.num_classes", f"the demo model has {len(CLASS_NAMES)} classes"))
    if cfg.source == "timm":
        from cnnvis_cli.timm_zoo import WEIGHTS, check_timm_name

        check_timm_name(cfg.name)  # timm installed, and the name one of its architectures
        if cfg.weights not in WEIGHTS:
            refusals.append(("model.weights", f"a timm model takes model.weights=pretrained or null, not "
                                              f"{cfg.weights!r}"))
    if refusals:
        key, why = refusals[0]
        raise UserError(f"model={cfg.name} does not use {key}: {why}; drop {key}")


def torchvision_model_names() -> list[str]:
    """Every image-classification architecture torchvision can build."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _torchvision_model(cfg: ModelConfig) -> tuple[nn.Module, Preprocess, list[str] | None]:
    import torchvision

    weights, meta_weights = _torchvision_weights(cfg)
    load_pretrained = weights is not None and not cfg.checkpoint
    num_classes = cfg.num_classes or len(meta_weights.meta.get("categories") or []) or 1000
    if load_pretrained and num_classes != len(weights.meta["categories"]):
        raise UserError(
            f"weights {weights} have {len(weights.meta['categories'])} classes, not model.num_classes="
            f"{num_classes}; use model.weights=null with model.checkpoint=PATH for your own classes"
        )
    try:
        module = torchvision.models.get_model(
            cfg.name, weights=weights if load_pretrained else None, num_classes=num_classes
        )
    except OSError as error:  # urllib's errors are OSErrors: no network, proxy, disk full
        raise UserError(
            f"could not fetch weights {weights} ({error}); connect to the internet once, or run with "
            "model.weights=null (random weights) or model.checkpoint=PATH"
        ) from error
    categories = list(weights.meta["categories"]) if load_pretrained else None
    return module, torchvision_preprocess(cfg), _class_names(cfg, categories, num_classes)


def _torchvision_weights(cfg: ModelConfig):
    """The weights that `cfg` asks for (None for random weights), and the weights whose preprocessing and
    metadata apply: those, or the architecture's default ones."""
    import torchvision

    names = torchvision_model_names()
    if cfg.name not in names:
        raise unknown_name("model", cfg.name, names, "cnnvis list models")
    weights_enum = torchvision.models.get_model_weights(cfg.name)
    weights = _weights_entry(weights_enum, cfg.weights) if cfg.weights else None
    return weights, weights or weights_enum.DEFAULT  # preprocessing is known even without loading weights


def torchvision_preprocess(cfg: ModelConfig) -> Preprocess:
    """The preprocessing of a torchvision model: its weights' own `transforms()` (resize, crop,
    interpolation, mean, std), with the config's overrides."""
    transform = _torchvision_weights(cfg)[1].transforms()
    return _preprocess_from(cfg, _side(transform.resize_size), _side(transform.crop_size), transform.mean,
                            transform.std, transform.interpolation.value)


def _weights_entry(weights_enum, name: str):
    if name == "DEFAULT":
        return weights_enum.DEFAULT
    short_name = name.split(".")[-1]
    members = list(weights_enum.__members__)
    if short_name not in members:
        raise unknown_name(f"weights for {weights_enum.__name__}", short_name, [*members, "DEFAULT"],
                           "or model.weights=null for random weights")
    return weights_enum[short_name]


def _timm_model(cfg: ModelConfig) -> tuple[nn.Module, Preprocess, list[str] | None]:
    from cnnvis_cli import timm_zoo

    module, data_config = timm_zoo.timm_model(cfg)
    preprocess = timm_preprocess(cfg, data_config)
    categories = timm_zoo.label_names(module, cfg.weights == "pretrained" and not cfg.checkpoint)
    return module, preprocess, _class_names(cfg, categories, getattr(module, "num_classes", None))


def timm_preprocess(cfg: ModelConfig, data_config: dict) -> Preprocess:
    """A timm model's test-time preprocessing (`timm.data.create_transform` of its data config), with the
    config's overrides; the shorter side follows the input size by the model's `crop_pct`."""
    from cnnvis_cli.timm_zoo import resize_for

    if data_config.get("crop_mode", "center") != "center":
        log.warning("timm model %s crops by %r; cnnvis resizes the shorter side and keeps the centre",
                    cfg.name, data_config["crop_mode"])
    resize_size, input_size = resize_for({**data_config, "input_size": (3, cfg.input_size or 0, cfg.input_size)}
                                         if cfg.input_size else data_config)
    return _preprocess_from(cfg, resize_size, input_size, data_config["mean"], data_config["std"],
                            data_config["interpolation"])


def _custom_model(cfg: ModelConfig) -> tuple[nn.Module, Preprocess, list[str] | None]:
    if not cfg.factory:
        raise UserError("model.source=custom needs model.factory=package.module:callable")
    module_path, _, attribute = cfg.factory.replace(":", ".").rpartition(".")
    try:
        factory = getattr(importlib.import_module(module_path), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise UserError(f"cannot import model.factory '{cfg.factory}': {error}") from error
    module = factory(**cfg.kwargs)
    if not isinstance(module, nn.Module):
        raise UserError(f"model.factory '{cfg.factory}' returned {type(module).__name__}, not an nn.Module")
    input_size = cfg.input_size or 224
    # the shorter side resized to the input size and the square centre kept: no border cut off unless asked
    # for with model.resize_size
    preprocess = _preprocess_from(cfg, input_size, input_size, IMAGENET_MEAN, IMAGENET_STD)
    return module, preprocess, _class_names(cfg, None, cfg.num_classes)


def _demo_model(cfg: ModelConfig) -> tuple[nn.Module, Preprocess, list[str] | None]:
    from cnnvis_cli.demo import network, scene

    module = network.load_demo_model() if not cfg.checkpoint else network.DemoNet()
    size = scene.IMAGE_SIZE
    preprocess = _preprocess_from(cfg, size, size, network.MEAN, network.STD)
    return module, preprocess, _class_names(cfg, list(scene.CLASS_NAMES), len(scene.CLASS_NAMES))


def _preprocess_from(cfg: ModelConfig, resize_size: int | None, input_size: int | None,
                     mean, std, interpolation: str = "bilinear") -> Preprocess:
    """The model's own preprocessing, with the config's overrides (`model.input_size`, ...)."""
    input_size = cfg.input_size or input_size or 224
    resize_size = cfg.resize_size or resize_size or round(input_size * 256 / 224)
    mean = tuple(cfg.mean or mean)
    std = tuple(cfg.std or std)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise UserError("model.mean and model.std need three values each, std above zero")
    return Preprocess(resize_size, input_size, mean, std, cfg.interpolation or interpolation)  # type: ignore[arg-type]


def _side(size) -> int:
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def _class_names(cfg: ModelConfig, categories: list[str] | None, num_classes: int | None) -> list[str] | None:
    names = cfg.class_names
    if names is None:
        if categories is not None:
            return categories
        return imagenet_class_names() if num_classes == 1000 else None
    if names == "imagenet":
        return imagenet_class_names()
    if names == "dataset":
        return None
    if isinstance(names, str):
        raise UserError(f"model.class_names='{names}' is not valid; use a list, 'imagenet' or 'dataset'")
    return [str(name) for name in names]


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, in index order (shipped with torchvision, no download)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def require_checkpoint(checkpoint: str | Path, key: str = "model.checkpoint") -> Path:
    """The checkpoint that config `key` names, as a path, which must be a file."""
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise UserError(f"{key} not found: {path}")
    return path


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from `.safetensors`, or from `.pt`/`.pth` loaded with `weights_only=True`."""
    path = require_checkpoint(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as error:  # safetensors' own error: a file cut short, garbage, a pickle by another name
            raise UserError(f"cannot read {path} as safetensors ({first_line(str(error))}); give a file that "
                            "safetensors.torch.save_file wrote, or a .pt state dict") from error
    else:
        with path.open("rb") as file:
            magic = file.read(4)
        if magic != b"PK\x03\x04" and not magic.startswith(b"\x80"):  # torch.save's zip file, or a bare pickle
            raise UserError(f"{path} is not a PyTorch checkpoint (neither the zip file that torch.save writes nor "
                            "a pickle); give a state dict saved with torch.save, or a .safetensors file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle errors name the offending global on their first line
            raise UserError(
                f"cannot load {path} as a plain state dict (only tensors are allowed, no code): "
                f"{first_line(str(error))}"
            ) from error
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {key.removeprefix("module."): value for key, value in state.items()}  # as DataParallel saves


def _load_state_dict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key} {tuple(state[key].shape)} vs {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
        raise UserError(
            f"checkpoint {source} does not fit the architecture: {'; '.join(parts)}; "
            "check model.name and model.num_classes"
        )
    module.load_state_dict(state)


def inspect_layers(module: nn.Module, input_size: int) -> tuple[list[LayerInfo], int]:
    """Run one dry pass of one image; return the layers whose output holds a spatial grid (NCHW maps, NHWC
    maps, token sequences: layouts.py), in the order they finish, and the class count.

    Modules inside an attention module (per-head queries, keys, attention weights) hold no grid of the
    image and are left out. In a model with attention, the pass also takes the gradient of the top class
    with respect to every listed layer, to record whether the layer's grid reaches the output at all (after
    a ViT's last attention only the class token is read: the patch tokens there get zero gradient), and
    which layers run before the first attention (the patch embedding)."""
    attention = [name for name, child in module.named_modules() if name and is_attention(child)]
    record = _DryPassRecord(module, attention)
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    images = torch.randn(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        with record, torch.inference_mode(not attention), torch.enable_grad() if attention else nullcontext():
            logits = module(images.requires_grad_(bool(attention)))
    except RuntimeError as error:  # too small for its convolutions and poolings, or the wrong shape altogether
        raise UserError(f"the model cannot run on {input_size} x {input_size} px inputs ({first_line(str(error))}); "
                        "check model.input_size") from error
    outputs, first_attention = record.outputs, record.first_attention
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise UserError("the model must return a tensor of class scores (batch x classes)")
    prefix = model_prefix_tokens(module)
    found: dict[str, tuple[nn.Module, torch.Tensor, Layout, int]] = {}
    for position, (name, child, out) in enumerate(outputs):  # a module called twice keeps its last call
        if isinstance(child, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            continue  # the classifier's global pooling, not a feature map
        layout = layout_of(out, prefix)
        if layout is not None and out.shape[0] == len(images):  # not a batch of windows (Swin's attention)
            found.pop(name, None)
            found[name] = (child, out, layout, position)
    grids = {name: (out, layout) for name, (_, out, layout, _) in found.items()}
    classifier = record.features if record.linear_output is logits else logits  # the head's input, if it is one
    reaching = _reaching_output(classifier, grids) if attention else {}
    calls = Counter(name for name, _, _ in outputs)
    layers = []
    for name, (child, out, layout, position) in found.items():
        shape = tuple(layout.to_nchw(out).shape[1:])
        layers.append(LayerInfo(name, type(child).__name__, shape, calls[name], layout, tuple(out.shape[1:]),
                                reaching.get(name), first_attention is not None and position < first_attention))
    return layers, int(logits.shape[1])


class _DryPassRecord:
    """Hooks for `inspect_layers`' dry pass: every module's output (leaving out the insides of attention
    modules), the input and output of the last linear layer called (a classifier head, if its output is the
    model's), and how many outputs had finished when the first attention module started."""

    def __init__(self, module: nn.Module, attention: list[str]) -> None:
        self.module, self.inside = module, tuple(f"{name}." for name in attention)
        self.attention = set(attention)
        self.outputs: list[tuple[str, nn.Module, object]] = []
        self.features: torch.Tensor | None = None
        self.linear_output: object = None
        self.first_attention: int | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> _DryPassRecord:
        for name, child in self.module.named_modules():
            if not name or name.startswith(self.inside):
                continue
            self._handles.append(child.register_forward_hook(self._output(name)))
            if name in self.attention:
                self._handles.append(child.register_forward_pre_hook(self._attention_starts))
        return self

    def __exit__(self, *_: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _output(self, name: str):
        def keep(child: nn.Module, inputs: tuple, output: object) -> None:
            self.outputs.append((name, child, output))
            if isinstance(child, nn.Linear) and inputs and isinstance(inputs[0], torch.Tensor):
                self.features, self.linear_output = inputs[0], output
        return keep

    def _attention_starts(self, _child: nn.Module, _inputs: tuple) -> None:
        if self.first_attention is None:
            self.first_attention = len(self.outputs)


def _reaching_output(features: torch.Tensor, outputs: dict[str, tuple[torch.Tensor, Layout]]) -> dict[str, bool]:
    """For each layer, whether the classifier's features depend on its grid: a fixed random projection of
    them has a non-zero gradient somewhere on the grid. The features, not the scores: a random-initialised
    model's classifier may be all zeros (torchvision's ViT head), and then no gradient reaches anything."""
    projection = torch.randn(features.shape, generator=torch.Generator().manual_seed(0)).to(features.device)
    names = [name for name, (out, _) in outputs.items() if out.requires_grad]
    gradients = torch.autograd.grad((features * projection).sum(), [outputs[name][0] for name in names],
                                    allow_unused=True) if names and features.requires_grad else []
    reaching = {name: False for name in outputs}
    for name, gradient in zip(names, gradients, strict=True):
        layout = outputs[name][1]
        reaching[name] = gradient is not None and bool(layout.to_nchw(gradient).abs().amax() > 0)
    return reaching


def resolve_target_layer(module: nn.Module, requested: str | None, layers: list[LayerInfo]) -> str:
    """The requested layer if its output holds a spatial grid, else the default: the last such layer whose
    grid reaches the class scores (a ViT: the norm before the last block's attention), leaving out linear
    projections (a ViT's qkv) and the patch embedding; for a CNN, the last layer with a spatial output. A
    requested layer that is a patch embedding, or whose grid gets no gradient, is warned about."""
    default = _default_layer(layers)
    if requested:
        candidates = [layer.name for layer in layers]
        if requested not in dict(module.named_modules()):
            raise unknown_name("target layer", requested, candidates, "cnnvis list layers model=...")
        if requested not in candidates:
            raise UserError(f"layer '{requested}' has no spatial output (a feature map, or tokens on a grid) for a "
                            f"CAM; choose one of cnnvis list layers, e.g. {default or '?'}")
        layer = next(layer for layer in layers if layer.name == requested)
        if layer.embedding:
            log.warning("layer %s runs before the model's first attention: its maps show how patches were "
                        "embedded, not what the model attends to; the default layer is %s", requested, default)
        elif layer.reaches_output is False:
            log.warning("layer %s: the class scores do not depend on its patch tokens (zero gradient: after "
                        "the last attention only the class token is read), so gradient CAMs of it are blank; "
                        "the default layer is %s", requested, default)
        return requested
    if default is None:
        raise UserError("the model has no layer with a spatial output; set model.target_layer")
    return default


def _default_layer(layers: list[LayerInfo]) -> str | None:
    checked = [layer for layer in layers if layer.reaches_output is not None]
    if checked:  # a model with attention
        chosen = [layer for layer in checked if layer.reaches_output and not layer.embedding
                  and layer.kind != "Linear"]
        if chosen:
            return chosen[-1].name
    return layers[-1].name if layers else None
