"""python BCT_methods/L2/train.py BCT_methods/L2/configs/synthetic_OPclass_tiny_weakenedL2_softmax_to_arc_f128.py"""
from configs.synthetic import synthetic_compatible_config

config = synthetic_compatible_config("L2")
config.l2_weight = 10.0
config.l2_threshold = 0.2          # weakened L2
