"""torchrun --nproc_per_node=8 BCT_methods/NCCL/train.py BCT_methods/NCCL/configs/OPdata_ms1mv3_r18_to_r50_NCCL_arc_to_arc_f512.py"""
from configs.ms1mv3 import compatible_config

config = compatible_config("NCCL", "OPdata", old_head="arc", embedding_size=512)
config.nccl_queue_size = 8192
config.nccl_alpha = 1.0
config.nccl_beta = 0.01
config.nccl_temperature = 1.0
config.nccl_reference_world_size_factor = True   # l1 x world size, as the reference at 8 GPUs
