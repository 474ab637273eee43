"""NCCL on the synthetic demo set (tools/synthetic), Open-class: old tiny softmax f128 on
class30 -> new tiny ArcFace f128 on class70; old-model artifacts f128_tiny_softmax_class70.

    python BCT_methods/NCCL/train.py BCT_methods/NCCL/configs/synthetic_OPclass_tiny_NCCL_softmax_to_arc_f128.py
"""
from configs.synthetic import synthetic_config

config = synthetic_config("train_part_70_class", method="arcface")
config.method = "NCCL"
config.old_network = "tiny"
config.old_embedding_size = 128

config.old_features = "feature_save/synthetic/OPclass/f128_tiny_softmax_class70_feature.npy"
config.nccl_queue_size = 1024       # a few thousand images: a smaller queue
config.nccl_alpha = 1.0
config.nccl_beta = 0.01
config.nccl_temperature = 1.0
