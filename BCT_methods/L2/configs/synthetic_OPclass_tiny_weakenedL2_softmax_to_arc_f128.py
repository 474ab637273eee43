"""weakened L2 on the synthetic demo set (tools/synthetic), Open-class: old tiny softmax f128 on
class30 -> new tiny ArcFace f128 on class70; old-model artifacts f128_tiny_softmax_class70.

    python BCT_methods/L2/train.py BCT_methods/L2/configs/synthetic_OPclass_tiny_weakenedL2_softmax_to_arc_f128.py
"""
from configs.synthetic import synthetic_config

config = synthetic_config("train_part_70_class", method="arcface")
config.method = "L2"
config.old_network = "tiny"
config.old_embedding_size = 128

config.old_features = "feature_save/synthetic/OPclass/f128_tiny_softmax_class70_feature.npy"
config.l2_weight = 10.0
config.l2_threshold = 0.2          # weakened L2
