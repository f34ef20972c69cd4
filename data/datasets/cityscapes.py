"""Cityscapes (gtFine): 19 classes, 2,975 train / 500 val; prepared by tools/prepare_cityscapes.py.

``gtFine/*_labelIds.png`` hold the 34 labelIds (0..33) of the official label table (cityscapesScripts,
``helpers/labels.py``); the 19 evaluated classes are its trainIds, every other id is ignored (255). Protocol: CIRKD's
``eval.py`` forwards each 1024x2048 val image whole (``predict_whole``, no sliding window, one scale, no flip), so
``test.mode=whole`` at ``base_size`` 2048 (the long side, unchanged). semseg and mmseg slide 769 or 512x1024 windows
instead; ``test.mode=slide test.crop_size=769`` gives semseg's.
"""

from data.datasets.base import IGNORE, DatasetFacts, register

_ = IGNORE
# labelId -> trainId, labelIds 0..33 (cityscapesScripts helpers/labels.py: unlabeled, ego vehicle, rectification
# border, out of roi, static, dynamic, ground, road=0, sidewalk=1, parking, rail track, building=2, wall=3, fence=4,
# guard rail, bridge, tunnel, pole=5, polegroup, traffic light=6, traffic sign=7, vegetation=8, terrain=9, sky=10,
# person=11, rider=12, car=13, truck=14, bus=15, caravan, trailer, train=16, motorcycle=17, bicycle=18)
LABEL_IDS = (_, _, _, _, _, _, _, 0, 1, _, _, 2, 3, 4, _, _, _, 5, _, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, _, _,
             16, 17, 18)

CITYSCAPES = register(DatasetFacts(
    name="cityscapes",
    title="Cityscapes",
    names_file="data/cityscapes/cityscapes_names.txt",
    colors_file="data/cityscapes/cityscapes_colors.txt",
    counts={"train": 2975, "val": 500},
    lists={"train": "list/train.txt", "val": "list/val.txt"},
    protocol={"mode": "whole", "resize": "long", "base_size": 2048},
    source="winycg/CIRKD eval.py (CSValSet crop_size (1024, 2048), predict_whole) and its README (2975 / 500)",
    label_map=LABEL_IDS,
))
