"""torchrun --nproc_per_node=8 BCT_methods/L2/train.py BCT_methods/L2/configs/EXdata_ms1mv3_r18_to_r50_weakenedL2_softmax_to_arc_f512.py"""
from configs.ms1mv3 import compatible_config

config = compatible_config("L2", "EXdata", old_head="softmax", embedding_size=512)
config.l2_weight = 10.0
config.l2_threshold = 0.2          # weakened L2
