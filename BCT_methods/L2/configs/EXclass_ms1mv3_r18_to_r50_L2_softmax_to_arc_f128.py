"""torchrun --nproc_per_node=8 BCT_methods/L2/train.py BCT_methods/L2/configs/EXclass_ms1mv3_r18_to_r50_L2_softmax_to_arc_f128.py"""
from configs.ms1mv3 import compatible_config

config = compatible_config("L2", "EXclass", old_head="softmax", embedding_size=128)
config.l2_weight = 10.0
config.l2_threshold = 0.0          # plain L2
