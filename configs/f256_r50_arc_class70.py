"""Independent new model (new*) of the OPclass scenario: r50 ArcFace via Partial FC, 256-d features,
MS1M-V3 class70 (the data the scenario's compatible models train on), no compatibility term.

    torchrun --nproc_per_node=8 train_old_arc.py configs/f256_r50_arc_class70.py
"""
from configs.ms1mv3 import grid_config

config = grid_config("class70", method="arcface", network="r50", embedding_size=256)
