"""The deployed network and its export to TorchScript and ONNX, each checked against the eager network.

:class:`InferenceNetwork` is what is exported: a float32 N×3×H×W RGB batch on the 0..255 scale (not normalised:
ImageNet's mean and std, ``data.transforms.IMAGENET_MEAN`` / ``IMAGENET_STD``, are applied inside) -> N×K×H×W
logits at the input's size (the segmentor's 1/8 logits zoomed bilinearly with its ``align_corners``, as
evaluation zooms them), no aux head, no softmax. Its argmax is the class map of ``predict.py`` with
``test.mode=whole test.scales=[1.0] test.flip=false`` and ``test.base_size`` the image's long side (the image
is then not resized).

TorchScript is a trace (``torch.jit.trace``: the network has no data-dependent control flow, and the sizes of
the PPM's and the final upsampling are traced as sizes, so height and width stay dynamic). ONNX uses
``torch.onnx.export(..., dynamo=False)``, the TorchScript-based exporter, which needs the onnx package but not
onnxscript (the dynamo exporter's); it cannot export ``adaptive_avg_pool2d`` (the PPM's 2, 3 and 6 bins) on
dynamic sizes, so the exported copy pools with :class:`MatrixAdaptiveAvgPool2d`, the same averages as two
matrix products built from the input's size. (The dynamo exporter, with onnxscript installed, exported a graph
whose pooling was fixed to the example's size: equal to eager at that size, wrong by 2.5 at 65×49. The check
runs a second size for that reason.)

:class:`TrainableStudent` is the student ``deploy/cpp/segkd_distill`` trains (``tools.export --trainable``): the
same input, returning the tuple (main logits, aux logits), both N×K×H×W at the input's size, its parameters
requiring grad. Its BatchNorm layers run in eval mode: the running statistics normalise and stay frozen (not
updated), their weight and bias train; dropout is off. A trace bakes that mode in (``train()`` on the loaded file
changes nothing), so one step is deterministic and the same in C++ and Python. The file carries
:data:`TRAINABLE_EXTRA` (``torch.jit.save``'s extra files), the mark segkd_distill checks for.
"""

from __future__ import annotations

import contextlib
import copy
import json
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data.transforms import IMAGENET_MEAN, IMAGENET_STD
from util.errors import SegKDError

FORMATS = ("torchscript", "onnx")
ATOL, RTOL = 1e-4, 1e-5  # the check's tolerance on the logits: :func:`tolerance`
INPUT_NAME, OUTPUT_NAME = "image", "logits"
TRAINABLE_EXTRA = "segkd_trainable.json"  # the extra file that marks a trainable student (segkd_distill checks it)
BACKBONE_PREFIX = "segmentor.backbone."  # a trainable student's backbone parameters (base lr; the rest x head mult)


class InferenceNetwork(nn.Module):
    """A segmentor as deployed: N×3×H×W float32 RGB 0..255 -> N×K×H×W logits at the input's size.

    The normalisation is :func:`data.transforms.normalize`'s, the same float32 operations on the same constants
    (``(x - mean) * (1 / std)``), so the logits are those evaluation computes from the same image."""

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        self.segmentor = segmentor.eval()
        self.align_corners = bool(getattr(segmentor, "align_corners", True))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        logits = self.segmentor((x - self.mean) * self.inv_std, aux=False)["out"]
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)


class TrainableStudent(InferenceNetwork):
    """A student as ``deploy/cpp/segkd_distill`` trains it: N×3×H×W float32 RGB 0..255 (normalised inside, as
    :class:`InferenceNetwork`) -> (main logits, aux logits), each N×K×H×W, zoomed to the input's size with the
    network's ``align_corners`` (the upsampled logits CE and, with ``distill.full_resolution``, KD compare).

    BatchNorm in eval mode (running statistics used and frozen; weight and bias trainable), dropout off:
    ``train()`` leaves the segmentor in eval mode, and the trace bakes it in. The input side (the segmentor in eval
    mode, the normalisation buffers) is :class:`InferenceNetwork`'s."""

    def train(self, mode: bool = True) -> TrainableStudent:
        super().train(mode)
        self.segmentor.eval()  # frozen BN statistics and no dropout, whatever the caller asks
        return self

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.segmentor((x - self.mean) * self.inv_std, aux=True)
        size = x.shape[-2:]
        return tuple(F.interpolate(logits[k], size=size, mode="bilinear", align_corners=self.align_corners)
                     for k in ("out", "aux"))


def trainable_description(student: TrainableStudent, classes: int) -> dict:
    """What :data:`TRAINABLE_EXTRA` holds: the file's contract, read by people (segkd_distill only checks that
    it is there)."""
    return {"segkd": "trainable student", "classes": classes, "align_corners": student.align_corners,
            "input": "float32 Nx3xHxW RGB 0..255, normalised inside",
            "outputs": ["out: NxKxHxW main logits", "aux: NxKxHxW aux logits"],
            "batchnorm": "eval mode: running statistics frozen, weight and bias trainable; dropout off",
            "backbone_prefix": BACKBONE_PREFIX}


def export_trainable(student: TrainableStudent, out: str, size: tuple[int, int], classes: int) -> None:
    """Trace ``student`` on an ``example_input(*size)`` (with grad: its parameters keep ``requires_grad``) and save
    it to ``out`` with :data:`TRAINABLE_EXTRA`."""
    for p in student.parameters():
        p.requires_grad_(True)
    with _quiet():
        traced = torch.jit.trace(student.train(), example_input(*size), check_trace=False)
        torch.jit.save(traced, out, _extra_files={TRAINABLE_EXTRA: json.dumps(trainable_description(student, classes))})


class JoinedLogits(nn.Module):
    """A :class:`TrainableStudent` (or its loaded file) as one tensor, main and aux logits concatenated along the
    classes: N×2K×H×W, so :func:`max_differences` checks both."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(self.student(x), dim=1)


class MatrixAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d(output_size)`` as ``P_h @ x @ P_w^T``: row i of P averages the input positions
    ``floor(i n / b) .. ceil((i + 1) n / b) - 1``, PyTorch's bins. The matrices are built from the input's size
    with tensor operations, so the ONNX graph keeps height and width dynamic."""

    def __init__(self, output_size: int | Sequence[int]):
        super().__init__()
        size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        if len(size) != 2 or any(not isinstance(s, int) for s in size):
            raise SegKDError(f"MatrixAdaptiveAvgPool2d: output size {output_size!r} must be one or two ints")
        self.output_size = size

    @staticmethod
    def bins(line: Tensor, b: int) -> Tensor:
        """b×n averaging matrix for an input of length n = ``line.numel()`` (``line`` any 1-D float tensor of it)."""
        ones = torch.ones_like(line)
        n = ones.sum()
        pos = (ones.cumsum(0) - 1)[None]  # 0 .. n-1
        i = torch.arange(b, dtype=line.dtype, device=line.device)[:, None]
        inside = (pos >= torch.floor(i * n / b)) & (pos < torch.ceil((i + 1) * n / b))
        weights = inside.to(line.dtype)
        return weights / weights.sum(1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        """N×C×H×W -> N×C×b_h×b_w."""
        rows = self.bins(x[0, 0, :, 0], self.output_size[0])
        cols = self.bins(x[0, 0, 0, :], self.output_size[1])
        return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


def onnx_ready(network: nn.Module) -> nn.Module:
    """A copy of ``network`` with every ``nn.AdaptiveAvgPool2d`` replaced by :class:`MatrixAdaptiveAvgPool2d`."""
    network = copy.deepcopy(network)
    for module in list(network.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(module, name, MatrixAdaptiveAvgPool2d(child.output_size))
    return network


def example_input(height: int, width: int, seed: int = 0) -> Tensor:
    """The fixed check input: 1×3×H×W uniform 0..255 from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, height, width, generator=g) * 255


def export(network: InferenceNetwork, fmt: str, out: str, size: tuple[int, int]) -> None:
    """Write ``network`` to ``out`` as ``fmt`` (:data:`FORMATS`), traced on an ``example_input(*size)``."""
    if fmt not in FORMATS:
        raise SegKDError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
    x = example_input(*size)
    network = network.eval()
    with torch.no_grad(), _quiet():
        if fmt == "torchscript":  # no check_trace: max_differences checks the saved file, at two sizes
            torch.jit.trace(network, x, check_trace=False).save(out)
        else:
            dims = {0: "batch", 2: "height", 3: "width"}
            torch.onnx.export(onnx_ready(network), (x,), out, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: dims, OUTPUT_NAME: dims}, opset_version=17, dynamo=False)


@contextlib.contextmanager
def _quiet():
    """torch 2.9+ deprecates TorchScript (trace, load) and the TorchScript-based ONNX exporter with a warning each
    call; they are still what libtorch loads and what exports the PPM with dynamic sizes (module docstring)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export")
        yield


def load_trainable(path: str) -> torch.jit.ScriptModule:
    """A file written by :func:`export_trainable`; a file without :data:`TRAINABLE_EXTRA` is a SegKDError."""
    extra = {TRAINABLE_EXTRA: ""}
    try:
        with _quiet():
            module = torch.jit.load(path, map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError) as e:
        raise SegKDError(f"{path}: not a loadable TorchScript file ({str(e).splitlines()[0]})") from None
    if not extra[TRAINABLE_EXTRA]:
        raise SegKDError(f"{path}: not a trainable student (export it with python -m tools.export --trainable)")
    return module


def load_exported(path: str, fmt: str, threads: int = 0):
    """A callable float32 N×3×H×W tensor -> N×K×H×W tensor running the exported file (ONNX in ONNX Runtime's CPU
    provider, ``threads`` intra-op threads, 0: its default)."""
    if fmt == "torchscript":
        with _quiet():
            module = torch.jit.load(path, map_location="cpu").eval()
        return lambda x: module(x)
    try:
        import onnxruntime as ort
    except ImportError:
        raise SegKDError("onnxruntime is not installed: it runs the ONNX file (pip install onnxruntime, or "
                         "-r requirements-dev.txt)") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])


def check_sizes(size: tuple[int, int]) -> list[tuple[int, int]]:
    """The check's input sizes: the traced one and a second one, neither side a multiple of 8 and not the
    traced size (a graph fixed to the traced size fails there)."""
    h, w = size
    return [(h, w), (h + 8 - h % 8 + 1, w + 8 - w % 8 + 3)]


def tolerance(largest_logit: float, atol: float = ATOL, rtol: float = RTOL) -> float:
    """The largest max abs difference a check accepts: ``atol + rtol * max |eager logit|``. Float32 kernels of
    two runtimes sum in different orders: on a random-init PSPNet-R50 (logits up to 40) at 512x512, ONNX Runtime
    differs from eager by 1.8e-4 with every graph optimisation off (4.4e-6 of the logits' range), so a purely
    absolute 1e-4 would refuse a correct export of a network whose logits are large."""
    return atol + rtol * largest_logit


@torch.no_grad()
def max_differences(network: nn.Module, exported, sizes: Sequence[tuple[int, int]]) -> list[tuple[float, float]]:
    """(max abs difference between ``exported(x)`` and ``network(x)``, max abs eager logit) on ``example_input``
    of each size."""
    rows = []
    network = network.eval()
    for h, w in sizes:
        x = example_input(h, w)
        got, want = exported(x), network(x)
        if got.shape != want.shape:
            raise SegKDError(f"exported output {tuple(got.shape)} for a {h}x{w} input, eager {tuple(want.shape)}")
        rows.append(((got - want).abs().max().item(), want.abs().max().item()))
    return rows
