"""python BCT_methods/BCT/train.py BCT_methods/BCT/configs/synthetic_OPclass_tiny_BCT_softmax_to_arc_f128.py"""
from configs.synthetic import synthetic_compatible_config

config = synthetic_compatible_config("BCT")
config.bct_weight = 1.0
config.bct_scale = 1.0             # no scale on the cosine logits, as the reference
