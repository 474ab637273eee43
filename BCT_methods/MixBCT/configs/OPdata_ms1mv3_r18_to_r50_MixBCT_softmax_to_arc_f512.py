"""torchrun --nproc_per_node=8 BCT_methods/MixBCT/train.py BCT_methods/MixBCT/configs/OPdata_ms1mv3_r18_to_r50_MixBCT_softmax_to_arc_f512.py"""
from configs.ms1mv3 import compatible_config

config = compatible_config("MixBCT", "OPdata", old_head="softmax", embedding_size=512)
config.mix_ratio = 0.3
