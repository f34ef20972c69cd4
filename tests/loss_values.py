"""Loss terms of every shipped distillation config on seeded inputs, saved to ``sys.argv[1]``.

Run with a tree's root on PYTHONPATH (tests/test_loss_identity.py runs it on this tree and on the commit
before ``distill.terms`` existed), so both trees compute the same batches through their own code.
"""

import glob
import sys

import torch

from model.distiller import Distiller
from model.pspnet import build_pspnet
from util.config import load_config


def main(out_path: str, configs_root: str) -> None:
    """The configs of ``configs_root`` (the older tree's, so both trees run the same files)."""
    out = {}
    for cfg_path in sorted(glob.glob(f"{configs_root}/config/*/pspnet18_kd*.yaml")):
        name = cfg_path[len(configs_root) + 1:]
        for full in ("false", "true"):
            cfg = load_config(cfg_path, ["data.classes=5", f"distill.full_resolution={full}"])
            torch.manual_seed(0)
            student, teacher = build_pspnet(18, 5).train(), build_pspnet(18, 5)  # any teacher of the same classes
            distiller = Distiller.from_config(student, teacher, cfg).train()
            g = torch.Generator().manual_seed(1)
            x, y = torch.randn(2, 3, 65, 65, generator=g), torch.randint(0, 5, (2, 65, 65), generator=g)
            y[:, :10] = 255
            torch.manual_seed(2)  # dropout
            total, terms = distiller(x, y)
            total.backward()
            out[f"{name}|full={full}"] = {"total": total.detach(), **terms, "grad": student.head[0].weight.grad}
    torch.save(out, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
