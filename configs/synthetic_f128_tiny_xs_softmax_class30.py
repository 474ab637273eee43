"""Old model of the demo:
tiny_xs CPU network, softmax head, 128-d features, on the synthetic set written by
tools/synthetic (class and image counts are read from the data).

    python train_old_softmax.py configs/synthetic_f128_tiny_xs_softmax_class30.py
"""
from configs.synthetic import synthetic_old_config

config = synthetic_old_config("train_part_30_class")
