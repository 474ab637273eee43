"""AdvBCT, Open-class: old model on class30, new model on class70 (disjoint identities).
Old r18 softmax f256 -> new r50 ArcFace f256; old-model artifacts f256_r18_softmax_class70.

    torchrun --nproc_per_node=8 BCT_methods/AdvBCT/train.py BCT_methods/AdvBCT/configs/OPclass_ms1mv3_r18_to_r50_AdvBCT_softmax_to_arc_f256.py
"""
from configs.ms1mv3 import grid_config

config = grid_config("class70", method="arcface", network="r50", embedding_size=256)
config.method = "AdvBCT"
config.old_network = "r18"
config.old_embedding_size = 256

config.old_features = "feature_save/OPclass/f256_r18_softmax_class70_feature.npy"
config.class_meta = "feature_save/OPclass/f256_r18_softmax_class70_class_meta.npz"
config.advbct_boundary_threshold = 0.4
config.advbct_p2s_weight = 4.0
config.advbct_adv_weight = 4.0
