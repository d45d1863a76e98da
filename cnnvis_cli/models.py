"""Load the network to explain: a torchvision model, a user's checkpoint, any callable, or the demo.

Whatever its source, a model arrives as a `LoadedModel`: the module in eval mode with frozen parameters,
how to preprocess images for it, its class names when it knows them, and the layer CAMs should look at.
"""

from __future__ import annotations

import importlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnvis_cli.config import ModelConfig
from cnnvis_cli.errors import UserError, first_line, unknown_name

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
    else:
        raise unknown_name("model.source", cfg.source, ("torchvision", "custom", "demo"))
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
    if cfg.source != "custom":
        refusals += [(key, "it is for model=custom") for key, value in (("model.factory", cfg.factory),
                                                                      ("model.kwargs", cfg.kwargs)) if value]
    if cfg.source == "custom" and cfg.weights:
        refusals.append(("model.weights", "a custom model gets its weights from its factory or model.checkpoint"))
    if cfg.source == "demo":
        from cnnvis_cli.demo.scene import CLASS_NAMES

        if cfg.weights:
            refusals.append(("model.weights", "the demo model's weights are its own; model.checkpoint=PATH replaces "
                                              "them"))
        if cfg.num_classes not in (None, len(CLASS_NAMES)):
            refusals.append(("model.num_classes", f"the demo model has {len(CLASS_NAMES)} classes"))
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
    """Run one dry forward pass; return the layers with spatial outputs (in order) and the class count."""
    outputs: list[tuple[str, nn.Module, object]] = []
    handles = [
        child.register_forward_hook(lambda mod, _inp, out, name=name: outputs.append((name, mod, out)))
        for name, child in module.named_modules()
        if name
    ]
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    try:
        with torch.inference_mode():
            logits = module(torch.zeros(1, 3, input_size, input_size, device=device))
    except RuntimeError as error:  # too small for its convolutions and poolings, or the wrong shape altogether
        raise UserError(f"the model cannot run on {input_size} x {input_size} px inputs ({first_line(str(error))}); "
                        "check model.input_size") from error
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise UserError("the model must return a tensor of class scores (batch x classes)")
    layers: dict[str, LayerInfo] = {}
    calls = Counter(name for name, _, _ in outputs)
    for name, child, out in outputs:  # in the order modules finished; a module called twice keeps its last call
        if isinstance(child, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            continue  # the classifier's global pooling, not a feature map
        if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] > 1 and out.shape[-2] > 1:
            layers.pop(name, None)
            layers[name] = LayerInfo(name, type(child).__name__, tuple(out.shape[1:]), calls[name])
    return list(layers.values()), int(logits.shape[1])


def resolve_target_layer(module: nn.Module, requested: str | None, layers: list[LayerInfo]) -> str:
    """The requested layer if it has a spatial output, else the last layer whose output is a spatial map."""
    if requested:
        candidates = [layer.name for layer in layers]
        if requested not in dict(module.named_modules()):
            raise unknown_name("target layer", requested, candidates, "cnnvis list layers model=...")
        if requested not in candidates:
            raise UserError(f"layer '{requested}' has no spatial output (N x C x H x W) for a CAM; "
                            f"choose one of cnnvis list layers, e.g. {candidates[-1] if candidates else '?'}")
        return requested
    if not layers:
        raise UserError("the model has no layer with a spatial output; set model.target_layer")
    return layers[-1].name
