"""L2, Open-class: old model on class30, new model on class70 (disjoint identities).
Old r18 ArcFace f512 -> new r50 ArcFace f512; old-model artifacts f512_r18_arc_class70.

    torchrun --nproc_per_node=8 BCT_methods/L2/train.py BCT_methods/L2/configs/OPclass_ms1mv3_r18_to_r50_L2_arc_to_arc_f512.py
"""
from configs.ms1mv3 import grid_config

config = grid_config("class70", method="arcface", network="r50", embedding_size=512)
config.method = "L2"
config.old_network = "r18"
config.old_embedding_size = 512

config.old_features = "feature_save/OPclass/f512_r18_arc_class70_feature.npy"
config.l2_weight = 10.0
config.l2_threshold = 0.0          # plain L2
