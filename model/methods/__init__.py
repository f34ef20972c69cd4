"""Distillation methods, one file each, registered by name (``distill.terms: [fitnet, at]``).

Adding a method: a file here with a :class:`~model.methods.base.Method` subclass under ``@register``, its
import below, and its ``distill.<name>`` block of defaults in ``config/defaults.yaml``.
"""

from model.methods.base import (
    FEATURES,
    LOGITS,
    METHODS,
    TENSORS,
    Method,
    Param,
    check_params,
    method_class,
    pick,
    register,
    tensor_names,
)

__all__ = ["FEATURES", "LOGITS", "METHODS", "TENSORS", "Method", "Param", "check_params", "method_class", "pick",
           "register", "tensor_names"]

# Registration: importing a method's file registers it.
from model.methods import afd, at, cirkd, dkd, fitnet, ifvd, rkd, skd, sphere  # noqa: E402,F401
