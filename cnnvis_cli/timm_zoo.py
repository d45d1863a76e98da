"""timm's model zoo (`model=timm model.name=NAME`): any timm classifier, with its own preprocessing.

timm is an optional extra (`pip install 'cnnvis[timm]'`): torchvision's zoo needs nothing more, and timm
brings huggingface_hub with it. Preprocessing follows the model's data config
(`timm.data.resolve_model_data_config`: input size, `crop_pct`, interpolation, mean, std), as timm's own
`create_transform` applies it at test time: the shorter side resized to floor(input size / crop_pct), the
centre cropped.
"""

from __future__ import annotations

import math

from torch import nn

from cnnvis_cli.config import ModelConfig
from cnnvis_cli.errors import UserError, first_line, unknown_name

INSTALL = "pip install 'cnnvis[timm]'"
WEIGHTS = ("pretrained", None)


def require_timm():
    """The timm package, or a one-line error that says how to install it."""
    try:
        import timm
    except ImportError as error:
        raise UserError(f"model=timm needs the timm package: {INSTALL}") from error
    return timm


def timm_model_names() -> list[str]:
    """Every architecture timm can build (a pretrained tag, `resnet50.a1_in1k`, may follow a name)."""
    return sorted(require_timm().list_models())


def check_timm_name(name: str) -> None:
    """Refuse an architecture timm does not have, with the closest names."""
    names = timm_model_names()
    if name.split(".")[0] not in names:
        raise unknown_name("timm model", name, names, "python -c \"import timm; print(timm.list_models('*vit*'))\"")


def timm_model(cfg: ModelConfig) -> tuple[nn.Module, dict]:
    """The timm model `cfg` describes (its pretrained weights with `model.weights=pretrained`, random ones with
    null) and its data config."""
    timm = require_timm()
    check_timm_name(cfg.name)
    if cfg.weights not in WEIGHTS:
        raise UserError(f"model.weights={cfg.weights} is not valid for a timm model; use model.weights=pretrained "
                        "(timm's weights for the name, e.g. vit_small_patch16_224.augreg_in21k_ft_in1k) or null")
    pretrained = cfg.weights == "pretrained" and not cfg.checkpoint
    options = {**cfg.kwargs, **({"num_classes": cfg.num_classes} if cfg.num_classes else {})}
    if cfg.input_size and "img_size" not in options:
        # a transformer's position embedding is built for one grid: timm resizes it for another input size
        defaults = timm.get_pretrained_cfg(cfg.name)
        if defaults is not None and getattr(defaults, "fixed_input_size", False):
            options["img_size"] = cfg.input_size
    try:
        module = timm.create_model(cfg.name, pretrained=pretrained, **options)
    except (OSError, RuntimeError) as error:  # no network, a hub error (an OSError), or an incomplete cache
        if not pretrained:
            raise
        raise UserError(
            f"could not fetch timm's weights for {cfg.name} ({first_line(str(error))}); fetch them once where "
            "there is a network (they stay in the Hugging Face cache), or download the weights file and give "
            "it with model.checkpoint=PATH (.safetensors or .pth), or run with model.weights=null") from error
    except TypeError as error:  # an option the architecture does not take
        raise UserError(f"timm model {cfg.name} cannot be built with {options}: {first_line(str(error))}") from error
    data_config = timm.data.resolve_model_data_config(module)
    if "img_size" in cfg.kwargs:  # the architecture built for another input size than its weights' default
        side = cfg.kwargs["img_size"]
        data_config["input_size"] = (3, *(side if isinstance(side, list | tuple) else (side, side)))
    return module, data_config


def resize_for(data_config: dict) -> tuple[int, int]:
    """(shorter side after resizing, crop side) of timm's test-time transform for `data_config`."""
    input_size = int(data_config["input_size"][-1])
    crop_pct = float(data_config.get("crop_pct") or 1.0)
    return math.floor(input_size / crop_pct), input_size


def label_names(module: nn.Module, loaded_pretrained: bool) -> list[str] | None:
    """The class names the pretrained weights carry, when they do and were loaded."""
    names = (getattr(module, "pretrained_cfg", None) or {}).get("label_names") if loaded_pretrained else None
    return [str(name) for name in names] if names else None
