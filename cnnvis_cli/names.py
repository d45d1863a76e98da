"""One rule for matching a class name that a person typed, a folder is called or a file name carries to a
model's class: case is ignored, and `_` and `-` read as spaces (`Egyptian_cat`, the form in output file
names, is `Egyptian cat`)."""

from __future__ import annotations

from collections.abc import Sequence


def class_key(name: str) -> str:
    """The form in which two class names that mean the same class are equal."""
    return " ".join(name.strip().lower().replace("_", " ").replace("-", " ").split())


def matching_classes(name: str, class_names: Sequence[str]) -> list[int]:
    """The indices of the classes `name` means: those it spells exactly, else those equal by `class_key`."""
    exact = [index for index, candidate in enumerate(class_names) if candidate == name]
    if exact:
        return exact
    key = class_key(name)
    return [index for index, candidate in enumerate(class_names) if class_key(candidate) == key]
