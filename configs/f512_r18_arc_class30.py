"""Old model: r18 ArcFace via Partial FC, 512-d features, MS1M-V3 class30.

    torchrun --nproc_per_node=8 train_old_arc.py configs/f512_r18_arc_class30.py
"""
from configs.ms1mv3 import grid_config

config = grid_config("class30", method="arcface", network="r18", embedding_size=512)
