"""What a distillation method is: a term between a student tensor and the teacher's tensor of the same name.

    @register
    class AT(Method):
        name, paper = "at", "Zagoruyko and Komodakis, ICLR 2017"
        default_tensor, default_weight = "out_feat", 10000.0
        params = {"p": Param(2.0, lambda v: v > 0, "positive")}

        def forward(self, student, teacher, target): ...

A method declares what it compares (``default_tensor``, overridden by ``distill.<name>.tensor``: one of
:data:`TENSORS`), its parameters (``params``: config keys ``distill.<name>.<key>`` with their defaults and
checks; ``config/defaults.yaml`` lists the same defaults, tests/test_distill_terms.py keeps them equal)
and any trainable module it needs, built in ``__init__`` (e.g. FitNets' connector): those parameters train
with the student at the new-layer learning rate (``train.base_lr * train.head_lr_mult``), are saved in
``last.pth`` under ``distill_modules`` and restored on resume, and are never part of the student's
evaluated or exported network.

``forward(student, teacher, target)`` gets the two tensors (N x C_s x h x w and N x C_t x h x w; for the
logit tensors ``out`` and ``aux``, C = K classes) and the N x H x W labels (``ignore_index`` marks pixels
without a label), and returns a scalar. The teacher tensor carries no gradient.

A method that reads the labels' classes (IFVD's class prototypes, DKD's target class) sets ``uses_labels``; the
others see ``target`` only for the ignored pixels, or not at all, and so also train on unlabelled images (SSLD's
``data.unlabeled_list``, whose pixels carry a label that is neither a class nor ignore).

A method that compares several tensors at once (AFD: the backbone's stages) sets ``several_tensors``: its
``default_tensor`` and ``distill.<name>.tensor`` are lists of names, it is built with one channel count per name
(lists), and ``forward`` gets one list of tensors per network, in the order of the names (:func:`pick`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Union

import torch
from torch import nn

from util.errors import SegKDError

# The tensors a segmentor returns by name (model/pspnet.py): the backbone's four stages, the tensor before
# each classifier (the 3x3 conv + BN + ReLU of the main head after the PPM, and of the aux head on layer3),
# and the two logit maps.
FEATURES = ("layer1", "layer2", "layer3", "layer4", "out_feat", "aux_feat")
LOGITS = ("out", "aux")
TENSORS = FEATURES + LOGITS


def tensor_names(tensor: Union[str, Sequence[str]]) -> tuple[str, ...]:
    """The names a term's ``tensor`` stands for: one name, or the list of a ``several_tensors`` method."""
    return (tensor,) if isinstance(tensor, str) else tuple(tensor)


def pick(outputs: dict[str, torch.Tensor], tensor: Union[str, Sequence[str]]
         ) -> Union[torch.Tensor, list[torch.Tensor]]:
    """What a method's ``forward`` gets from a network's named outputs: the tensor ``tensor`` names, or the list of
    the tensors a list of names names."""
    return outputs[tensor] if isinstance(tensor, str) else [outputs[name] for name in tensor]


def positive_int(v: object) -> bool:
    """A check for integer parameters such as pooling sizes: an int (not a bool) of at least 1."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


@dataclass(frozen=True)
class Param:
    """One parameter of a method: its default, the check a value must pass and how the error says it."""

    default: Any
    check: Callable[[Any], bool] = lambda v: True
    rule: str = "valid"


class Method(nn.Module):
    """Base class of the registered methods (see the module docstring)."""

    name: ClassVar[str]
    paper: ClassVar[str]
    default_tensor: ClassVar[Union[str, list[str]]]  # a list of names for a ``several_tensors`` method
    default_weight: ClassVar[float]
    params: ClassVar[dict[str, Param]] = {}
    logits_only: ClassVar[bool] = False  # compares class logits: ``tensor`` must be ``out`` or ``aux``
    same_channels: ClassVar[bool] = False  # needs C_s == C_t (there is no connector to bridge them)
    several_tensors: ClassVar[bool] = False  # ``tensor`` is a list of names; forward gets lists (module docstring)
    # reads the class of each pixel from ``target`` (not only which pixels are ignored): such a method cannot see
    # unlabelled images, so ``data.unlabeled_list`` with it in ``distill.terms`` is refused (build_terms)
    uses_labels: ClassVar[bool] = False

    def __init__(self, student_channels: Union[int, Sequence[int]], teacher_channels: Union[int, Sequence[int]],
                 classes: int, ignore_index: int = 255, align_corners: bool = True, **params: Any):
        super().__init__()
        self.student_channels, self.teacher_channels = student_channels, teacher_channels
        self.classes, self.ignore_index = classes, ignore_index
        self.align_corners = align_corners  # the student's: where its maps sit on the label (sample_target)
        unknown = set(params) - set(self.params)
        if unknown:
            raise SegKDError(f"distill.{self.name}: unknown parameter(s) {', '.join(sorted(unknown))}")
        check_params(self.name, params)  # a method built directly is checked as one built from config
        for key, spec in self.params.items():
            setattr(self, key, params.get(key, spec.default))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available as ``distill.terms: [<cls.name>]``."""
    if cls.name in METHODS:
        raise ValueError(f"distillation method {cls.name!r} registered twice")
    names = tensor_names(cls.default_tensor)
    if isinstance(cls.default_tensor, str) == cls.several_tensors or not set(names) <= set(TENSORS):
        raise ValueError(f"{cls.name}: default_tensor {cls.default_tensor!r} is not "
                         f"{'a list out of' if cls.several_tensors else 'one of'} {TENSORS}")
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    """The registered method ``name``; an unknown name lists the known ones."""
    if name not in METHODS:
        raise SegKDError(f"distill.terms: unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def check_params(name: str, values: dict[str, Any]) -> None:
    """Each ``distill.<name>.<key>`` value against the method's declared check (one line naming the key)."""
    cls = method_class(name)
    for key, spec in cls.params.items():
        if key in values and not spec.check(values[key]):
            raise SegKDError(f"distill.{name}.{key}={values[key]!r}: must be {spec.rule}")
