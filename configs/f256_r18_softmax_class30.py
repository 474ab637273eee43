"""Old model: r18 softmax (Linear with bias + CE), 256-d features, MS1M-V3 class30.

    torchrun --nproc_per_node=8 train_old_softmax.py configs/f256_r18_softmax_class30.py
"""
from configs.ms1mv3 import grid_config

config = grid_config("class30", method="softmax", network="r18", embedding_size=256)
