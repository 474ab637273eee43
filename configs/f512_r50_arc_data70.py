"""Independent new model (new*) of the OPdata scenario: r50 ArcFace via Partial FC, 512-d features,
MS1M-V3 data70 (the data the scenario's compatible models train on), no compatibility term.

    torchrun --nproc_per_node=8 train_old_arc.py configs/f512_r50_arc_data70.py
"""
from configs.ms1mv3 import grid_config

config = grid_config("data70", method="arcface", network="r50", embedding_size=512)
