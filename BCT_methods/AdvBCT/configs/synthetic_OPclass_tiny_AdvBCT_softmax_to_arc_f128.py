"""AdvBCT on the synthetic demo set (tools/synthetic), Open-class: old tiny softmax f128 on
class30 -> new tiny ArcFace f128 on class70; old-model artifacts f128_tiny_softmax_class70.

    python BCT_methods/AdvBCT/train.py BCT_methods/AdvBCT/configs/synthetic_OPclass_tiny_AdvBCT_softmax_to_arc_f128.py
"""
from configs.synthetic import synthetic_config

config = synthetic_config("train_part_70_class", method="arcface")
config.method = "AdvBCT"
config.old_network = "tiny"
config.old_embedding_size = 128

config.old_features = "feature_save/synthetic/OPclass/f128_tiny_softmax_class70_feature.npy"
config.class_meta = "feature_save/synthetic/OPclass/f128_tiny_softmax_class70_class_meta.npz"
config.advbct_boundary_threshold = 0.4
config.advbct_p2s_weight = 4.0
config.advbct_adv_weight = 4.0
