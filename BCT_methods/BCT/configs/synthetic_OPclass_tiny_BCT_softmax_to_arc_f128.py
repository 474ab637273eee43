"""BCT on the synthetic demo set (tools/synthetic), Open-class: old tiny softmax f128 on
class30 -> new tiny ArcFace f128 on class70; old-model artifacts f128_tiny_softmax_class70.

    python BCT_methods/BCT/train.py BCT_methods/BCT/configs/synthetic_OPclass_tiny_BCT_softmax_to_arc_f128.py
"""
from configs.synthetic import synthetic_config

config = synthetic_config("train_part_70_class", method="arcface")
config.method = "BCT"
config.old_network = "tiny"
config.old_embedding_size = 128

config.class_prototypes = "feature_save/synthetic/OPclass/f128_tiny_softmax_class70_avg_feature.npy"
config.bct_weight = 1.0
config.bct_scale = 1.0             # no scale on the cosine logits, as the reference
