"""PASCAL VOC 2012 aug (VOC 2012 + SBD): 21 classes, 10,582 train / 1,449 val; prepared by tools/prepare_voc.py.

Labels are stored as class indices (VOC's palette PNGs: 0 background, 1..20 objects, 255 void), so there is no
label map. Protocol: hszhao/semseg's (long side 512, sliding 473 windows, stride 2/3), what config/voc2012 states.
"""

from data.datasets.base import DatasetFacts, register
from data.palette import voc_palette

VOC2012 = register(DatasetFacts(
    name="voc2012",
    title="PASCAL VOC 2012",
    names_file="data/voc2012/voc2012_names.txt",
    colors_file="data/voc2012/voc2012_colors.txt",
    counts={"train": 10582, "val": 1449},
    lists={"train": "list/train_aug.txt", "val": "list/val.txt"},
    protocol={"mode": "slide", "resize": "long", "base_size": 512, "crop_size": 473},
    source="hszhao/semseg config/voc2012/voc2012_pspnet50.yaml (test: base_size 512, test_h/w 473)",
    base_palette=tuple(voc_palette(256)),
))
