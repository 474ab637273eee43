"""NCCL, Open-class: old model on class30, new model on class70 (disjoint identities).
Old r18 ArcFace f512 -> new r50 ArcFace f512; old-model artifacts f512_r18_arc_class70.

    torchrun --nproc_per_node=8 BCT_methods/NCCL/train.py BCT_methods/NCCL/configs/OPclass_ms1mv3_r18_to_r50_NCCL_arc_to_arc_f512.py
"""
from configs.ms1mv3 import grid_config

config = grid_config("class70", method="arcface", network="r50", embedding_size=512)
config.method = "NCCL"
config.old_network = "r18"
config.old_embedding_size = 512

config.old_features = "feature_save/OPclass/f512_r18_arc_class70_feature.npy"
config.nccl_queue_size = 8192
config.nccl_alpha = 1.0
config.nccl_beta = 0.01
config.nccl_temperature = 1.0
