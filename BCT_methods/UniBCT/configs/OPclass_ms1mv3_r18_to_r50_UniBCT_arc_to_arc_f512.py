"""torchrun --nproc_per_node=8 BCT_methods/UniBCT/train.py BCT_methods/UniBCT/configs/OPclass_ms1mv3_r18_to_r50_UniBCT_arc_to_arc_f512.py"""
from configs.ms1mv3 import compatible_config

config = compatible_config("UniBCT", "OPclass", old_head="arc", embedding_size=512)
# bct_weight 1, unibct_start_epoch 10, refinement at epochs (10, 20), tau 0.05, lambda 0.9: base.py
config.lr_schedule = "step"         # UniBCT: step decay (its own lr_lambda), not poly
config.decay_epoch = [20, 26, 32]   # x decay_rate (0.1) from each of these epochs
config.warmup_epoch = -1           # as every reference BCT / UniBCT config (utils/training/schedulers.py)
