"""torchrun --nproc_per_node=8 BCT_methods/UniBCT/train.py BCT_methods/UniBCT/configs/OPclass_ms1mv3_r18_to_r50_UniBCT_softmax_to_arc_f128.py"""
from configs.ms1mv3 import compatible_config

config = compatible_config("UniBCT", "OPclass", old_head="softmax", embedding_size=128)
config.bct_weight = 1.0
config.unibct_start_epoch = 10
config.unibct_refine_epochs = (10, 20)
config.unibct_tau = 0.05
config.unibct_lambda = 0.9
config.lr_schedule = "step"         # UniBCT: step decay (its own lr_lambda), not poly
config.decay_epoch = [20, 26, 32]
config.decay_rate = 0.1
