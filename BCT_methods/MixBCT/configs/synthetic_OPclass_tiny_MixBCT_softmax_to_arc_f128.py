"""python BCT_methods/MixBCT/train.py BCT_methods/MixBCT/configs/synthetic_OPclass_tiny_MixBCT_softmax_to_arc_f128.py"""
from configs.synthetic import synthetic_compatible_config

config = synthetic_compatible_config("MixBCT")
config.mix_ratio = 0.3
