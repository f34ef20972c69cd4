"""CamVid as CIRKD uses it (SegNet's 11-class split): 367 train / 101 val / 233 test; tools/prepare_camvid.py.

The stored labels (``trainannot/`` etc., 360x480) hold 0..10 for the 11 classes and 11 for "unlabelled", which is
ignored (CIRKD's ``id2trainId``: 11 -> -1). CIRKD trains on the 367 training images and reports the 233 test
images, each forwarded whole at its stored 360x480 (``eval.py``: ``CamvidValSet`` on camvid_test_list.txt).
"""

from data.datasets.base import IGNORE, DatasetFacts, register

CAMVID = register(DatasetFacts(
    name="camvid",
    title="CamVid",
    names_file="data/camvid/camvid_names.txt",
    colors_file="data/camvid/camvid_colors.txt",
    counts={"train": 367, "val": 101, "test": 233},
    lists={"train": "list/train.txt", "val": "list/val.txt", "test": "list/test.txt"},
    protocol={"mode": "whole", "resize": "long", "base_size": 480},
    source="winycg/CIRKD dataset/camvid.py and dataset/list/CamVid (367 / 101 / 233), eval.py (camvid_test_list)",
    label_map=(*range(11), IGNORE),
))
