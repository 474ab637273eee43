"""python BCT_methods/AdvBCT/train.py BCT_methods/AdvBCT/configs/synthetic_OPclass_tiny_AdvBCT_softmax_to_arc_f128.py"""
from configs.synthetic import synthetic_compatible_config

config = synthetic_compatible_config("AdvBCT")
config.advbct_boundary_threshold = 0.4
config.advbct_p2s_weight = 4.0
config.advbct_adv_weight = 4.0
