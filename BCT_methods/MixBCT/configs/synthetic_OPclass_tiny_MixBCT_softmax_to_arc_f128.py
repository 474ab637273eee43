"""MixBCT on the synthetic demo set (tools/synthetic), Open-class: old tiny softmax f128 on
class30 -> new tiny ArcFace f128 on class70; old-model artifacts f128_tiny_softmax_class70.

    python BCT_methods/MixBCT/train.py BCT_methods/MixBCT/configs/synthetic_OPclass_tiny_MixBCT_softmax_to_arc_f128.py
"""
from configs.synthetic import synthetic_config

config = synthetic_config("train_part_70_class", method="arcface")
config.method = "MixBCT"
config.old_network = "tiny"
config.old_embedding_size = 128

config.old_features = "feature_save/synthetic/OPclass/f128_tiny_softmax_class70_feature.npy"
config.credible_mask = "feature_save/synthetic/OPclass/f128_tiny_softmax_class70_credible_0.9.npy"
config.mix_ratio = 0.3
