"""torchrun --nproc_per_node=8 BCT_methods/AdvBCT/train.py BCT_methods/AdvBCT/configs/EXclass_ms1mv3_r18_to_r50_AdvBCT_arc_to_arc_f512.py"""
from configs.ms1mv3 import compatible_config

config = compatible_config("AdvBCT", "EXclass", old_head="arc", embedding_size=512)
config.advbct_boundary_threshold = 0.4
config.advbct_p2s_weight = 4.0
config.advbct_adv_weight = 4.0
