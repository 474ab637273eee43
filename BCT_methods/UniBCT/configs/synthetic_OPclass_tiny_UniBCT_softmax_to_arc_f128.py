"""python BCT_methods/UniBCT/train.py BCT_methods/UniBCT/configs/synthetic_OPclass_tiny_UniBCT_softmax_to_arc_f128.py"""
from configs.synthetic import synthetic_compatible_config

config = synthetic_compatible_config("UniBCT")
config.bct_weight = 1.0
config.unibct_start_epoch = 1          # the reference's 35 epochs scaled to 5: 10, 20 -> 1, 3
config.unibct_refine_epochs = (1, 3)
config.unibct_tau = 0.05
config.unibct_lambda = 0.9
config.lr_schedule = "step"         # UniBCT: step decay (its own lr_lambda), not poly
config.decay_epoch = [3, 4]           # reference 20, 26, 32 of 35 -> 3, 4 (5)
config.decay_rate = 0.1
