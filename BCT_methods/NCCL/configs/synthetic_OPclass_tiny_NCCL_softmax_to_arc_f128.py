"""python BCT_methods/NCCL/train.py BCT_methods/NCCL/configs/synthetic_OPclass_tiny_NCCL_softmax_to_arc_f128.py"""
from configs.synthetic import synthetic_compatible_config

config = synthetic_compatible_config("NCCL")
config.nccl_queue_size = 1024       # a few thousand images: a smaller queue
config.nccl_alpha = 1.0
config.nccl_beta = 0.01
config.nccl_temperature = 1.0
