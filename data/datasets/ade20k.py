"""ADE20K (SceneParsing, ADEChallengeData2016): 150 classes, 20,210 train / 2,000 val; tools/prepare_ade20k.py.

The stored labels hold 0 (other, not one of the 150) and 1..150; 0 is ignored and the rest shift down by one
(mmseg's ``reduce_zero_label``; CIRKD's ``label - 1`` with ignore -1). Protocol: the field's, mmseg's
``Resize(scale=(2048, 512), keep_ratio=True)`` then the whole image (``test.resize=short``, base 512,
``test.mode=whole``). CIRKD's ``eval.py`` instead forwards each val image whole at its stored size (docs/DATASETS.md).
"""

from data.datasets.base import IGNORE, DatasetFacts, register

ADE20K = register(DatasetFacts(
    name="ade20k",
    title="ADE20K",
    names_file="data/ade20k/ade20k_names.txt",
    colors_file="data/ade20k/ade20k_colors.txt",
    counts={"train": 20210, "val": 2000},
    lists={"train": "list/train.txt", "val": "list/val.txt"},
    protocol={"mode": "whole", "resize": "short", "base_size": 512},
    source="mmsegmentation configs/_base_/datasets/ade20k.py (test Resize (2048, 512)); class table mmseg ade.py",
    label_map=(IGNORE, *range(150)),
))
