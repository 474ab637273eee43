"""UniBCT on the synthetic demo set (tools/synthetic), Open-class: old tiny softmax f128 on
class30 -> new tiny ArcFace f128 on class70; old-model artifacts f128_tiny_softmax_class70.

    python BCT_methods/UniBCT/train.py BCT_methods/UniBCT/configs/synthetic_OPclass_tiny_UniBCT_softmax_to_arc_f128.py
"""
from configs.synthetic import synthetic_config

config = synthetic_config("train_part_70_class", method="arcface")
config.method = "UniBCT"
config.old_network = "tiny"
config.old_embedding_size = 128

config.old_features = "feature_save/synthetic/OPclass/f128_tiny_softmax_class70_feature.npy"
config.class_prototypes = "feature_save/synthetic/OPclass/f128_tiny_softmax_class70_avg_feature.npy"
config.bct_weight = 1.0
config.unibct_start_epoch = 4          # 35 -> 12 epochs: refine at 4 and 8
config.unibct_refine_epochs = (4, 8)
config.unibct_tau = 0.05
config.unibct_lambda = 0.9
config.lr_schedule = "step"         # UniBCT: step decay (its own lr_lambda), not poly
config.decay_epoch = [8, 10, 11]
config.decay_rate = 0.1
