"""What machine a run trained on: the CPU's name, vendor and vector units, read from /proc/cpuinfo.

CPU training is deterministic for a seed on one machine, and different CPUs move every run (docs/TABLES.md), so
a paired table must know which machine each seed's runs came from: train.py stores :func:`machine` in every
checkpoint's meta and test.py copies it into ``metrics.json`` as ``trained_on``.
"""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the table scripts use machine_label without torch
    import torch

# The vector units that change CPU kernels' arithmetic and speed, in the order they are named.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
# Variables that make torch's CPU kernels use fewer of those units than the CPU has (ATen's dispatch, oneDNN's):
# another arithmetic and speed on the same CPU, e.g. an AVX2-only machine imitated on an AVX-512 one.
KERNEL_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def kernel_limits() -> str | None:
    """``'ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2'``: the :data:`KERNEL_LIMITS` set in this process's
    environment (non-empty), None when none is."""
    found = [f"{name}={os.environ[name]}" for name in KERNEL_LIMITS if os.environ.get(name)]
    return " ".join(found) or None


def _cpuinfo_field(name: str) -> str | None:
    """The first ``name : value`` of /proc/cpuinfo; None where there is no such file or line."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo, what lscpu prints); empty where there is no such file."""
    return set((_cpuinfo_field("flags") or "").split())


def cpu_name() -> str:
    """lscpu's "Model name" (/proc/cpuinfo's model name), else the platform's processor string."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_generation() -> tuple[str | None, str | None]:
    """(``cpu family``, ``model``) of /proc/cpuinfo as strings (lscpu's "CPU family" and "Model"), None where
    unknown: what tells two VMs with the same bare model name apart (AMD's family 25 is Zen 3 or Zen 4, 26 Zen 5)."""
    return _cpuinfo_field("cpu family"), _cpuinfo_field("model")


def machine(device: torch.device) -> dict[str, Any]:
    """``{'cpu', 'vendor', 'isa', 'cpus', 'device', 'torch', 'family', 'model'}``: enough to tell two development
    VMs apart (their model names can be as bare as 'Intel(R) Xeon(R) Processor' or 'AMD EPYC').

    :func:`machine_label` leaves ``family`` and ``model`` out: the label names what moves the arithmetic (the vector
    units), and two generations with the same units have given the same scores bit for bit (docs/TABLES.md), only not
    the same speed, which is what the two fields are recorded for. ``kernels`` (only when set, :func:`kernel_limits`)
    is in the label: kernels limited to fewer units compute another arithmetic."""
    import torch

    flags = cpu_flags()
    family, model = cpu_generation()
    limits = kernel_limits()
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"cpu": cpu_name(), "vendor": _cpuinfo_field("vendor_id") or platform.machine(),
            "isa": [f for f in ISA_FLAGS if f in flags], "cpus": os.cpu_count(), "device": dev,
            "torch": str(torch.__version__),  # a plain str: TorchVersion is refused by weights_only loads
            "family": family, "model": model, **({"kernels": limits} if limits else {})}


def machine_label(meta: dict[str, Any] | None) -> str:
    """``'Intel(R) Xeon(R) Processor (GenuineIntel; avx2 avx512f avx512_bf16 amx_bf16), 2 CPUs'``, or
    ``'not recorded'`` for a checkpoint written before train.py recorded it."""
    if not isinstance(meta, dict):
        return "not recorded"
    isa = " ".join(meta.get("isa") or []) or "no AVX2"
    if meta.get("kernels"):
        isa += f"; kernels limited: {meta['kernels']}"
    gpu = f", {meta['device']}" if meta.get("device") not in (None, "cpu") else ""
    return f"{meta.get('cpu')} ({meta.get('vendor')}; {isa}), {meta.get('cpus')} CPUs{gpu}"
