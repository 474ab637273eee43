"""Old model: r18 softmax (Linear with bias + CE), 128-d features, MS1M-V3 data30.

    torchrun --nproc_per_node=8 train_old_softmax.py configs/f128_r18_softmax_data30.py
"""
from configs.ms1mv3 import grid_config

config = grid_config("data30", method="softmax", network="r18", embedding_size=128)
