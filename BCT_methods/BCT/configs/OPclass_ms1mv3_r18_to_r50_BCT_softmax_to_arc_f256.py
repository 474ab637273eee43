"""torchrun --nproc_per_node=8 BCT_methods/BCT/train.py BCT_methods/BCT/configs/OPclass_ms1mv3_r18_to_r50_BCT_softmax_to_arc_f256.py"""
from configs.ms1mv3 import compatible_config

config = compatible_config("BCT", "OPclass", old_head="softmax", embedding_size=256)
config.bct_weight = 1.0
config.bct_scale = 1.0             # no scale on the cosine logits, as the reference
config.warmup_epoch = -1           # as every reference BCT / UniBCT config (utils/training/schedulers.py)
