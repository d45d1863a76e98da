"""Targets: which classes to explain for each selected sample (`targets=[pred,true,top3,dishwasher]`), and
`contrast`: why the predicted class rather than the true one, the difference of their two logits
(Prabhushankar et al., "Contrastive Explanations in Neural Networks", ICIP 2020)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cnnvis_cli.errors import UserError, close_matches
from cnnvis_cli.names import matching_classes

_TOP = re.compile(r"top(\d+)")


@dataclass(frozen=True)
class Target:
    """A class to explain, and why (`pred`, `true`, `top2`, or `named`; joined with + when several)."""

    class_index: int
    role: str
    against: int | None = None  # contrast: the score is this class's logit minus that of `against`

    @property
    def explains_prediction(self) -> bool:
        return explains_prediction(self.role)

    def name(self, class_names: list[str]) -> str:
        """`circle`, or for a contrast `circle vs triangle`."""
        named = class_names[self.class_index]
        return named if self.against is None else f"{named} vs {class_names[self.against]}"


def explains_prediction(role: str) -> bool:
    """Whether a target of this role is the predicted class (alone or merged with another role)."""
    return "pred" in role.split("+")


def parse_targets(specs: list[str], class_names: list[str]) -> list[str | int]:
    """Check every entry of `targets` up front: a keyword, `topN`, a class name (matched as dataset folders
    are: case ignored, `_` and `-` as spaces) or a class index."""
    parsed: list[str | int] = []
    for spec in map(str, specs):
        named = matching_classes(spec, class_names)
        if spec in ("pred", "true", "contrast") or _TOP.fullmatch(spec):
            parsed.append(spec)
        elif len(named) == 1:
            parsed.append(named[0])
        elif named:
            raise UserError(f"target '{spec}' names {len(named)} classes ({', '.join(map(str, named))}); "
                            "give the one you mean by its index")
        elif spec.isdigit() and int(spec) < len(class_names):
            parsed.append(int(spec))
        else:
            matches = close_matches(spec, class_names)
            hint = f"did you mean {', '.join(matches)}?" if matches else \
                "use pred, true, contrast, topN, a class name or index"
            raise UserError(f"unknown target '{spec}': the model has no such class; {hint}")
    return parsed


def deepest_top(parsed: list[str | int]) -> int:
    """The largest N among `topN` entries (0 when none)."""
    return max((int(m.group(1)) for s in parsed if isinstance(s, str) and (m := _TOP.fullmatch(s))), default=0)


def targets_for(parsed: list[str | int], predicted: int, label: int | None, ranked: list[int]) -> list[Target]:
    """The distinct classes to explain for one sample, in the order asked; roles merge on duplicates."""
    roles: dict[tuple[int, int | None], list[str]] = {}
    for spec in parsed:
        if spec == "contrast":  # only where the prediction is wrong: predicted against true
            if label is not None and label != predicted:
                roles.setdefault((predicted, label), []).append("contrast")
            continue
        if spec == "pred":
            picks = [(predicted, "pred")]
        elif spec == "true":
            picks = [(label, "true")] if label is not None else []
        elif isinstance(spec, str):
            depth = int(_TOP.fullmatch(spec).group(1))  # type: ignore[union-attr]
            picks = [(cls, f"top{rank}") for rank, cls in enumerate(ranked[:depth], start=1)]
        else:
            picks = [(spec, "named")]
        for cls, role in picks:
            roles.setdefault((int(cls), None), []).append(role)
    return [Target(cls, "+".join(dict.fromkeys(r)), against) for (cls, against), r in roles.items()]
