"""MixBCT, Open-class: old model on class30, new model on class70 (disjoint identities).
Old r18 softmax f128 -> new r50 ArcFace f128; old-model artifacts f128_r18_softmax_class70.

    torchrun --nproc_per_node=8 BCT_methods/MixBCT/train.py BCT_methods/MixBCT/configs/OPclass_ms1mv3_r18_to_r50_MixBCT_softmax_to_arc_f128.py
"""
from configs.ms1mv3 import grid_config

config = grid_config("class70", method="arcface", network="r50", embedding_size=128)
config.method = "MixBCT"
config.old_network = "r18"
config.old_embedding_size = 128

config.old_features = "feature_save/OPclass/f128_r18_softmax_class70_feature.npy"
config.credible_mask = "feature_save/OPclass/f128_r18_softmax_class70_credible_0.9.npy"
config.mix_ratio = 0.3
