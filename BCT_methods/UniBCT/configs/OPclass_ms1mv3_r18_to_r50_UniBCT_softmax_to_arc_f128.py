"""UniBCT, Open-class: old model on class30, new model on class70 (disjoint identities).
Old r18 softmax f128 -> new r50 ArcFace f128; old-model artifacts f128_r18_softmax_class70.

    torchrun --nproc_per_node=8 BCT_methods/UniBCT/train.py BCT_methods/UniBCT/configs/OPclass_ms1mv3_r18_to_r50_UniBCT_softmax_to_arc_f128.py
"""
from configs.ms1mv3 import grid_config

config = grid_config("class70", method="arcface", network="r50", embedding_size=128)
config.method = "UniBCT"
config.old_network = "r18"
config.old_embedding_size = 128

config.old_features = "feature_save/OPclass/f128_r18_softmax_class70_feature.npy"
config.class_prototypes = "feature_save/OPclass/f128_r18_softmax_class70_avg_feature.npy"
config.bct_weight = 1.0
config.unibct_start_epoch = 10
config.unibct_refine_epochs = (10, 20)
config.unibct_tau = 0.05
config.unibct_lambda = 0.9
config.lr_schedule = "step"         # UniBCT: step decay (its own lr_lambda), not poly
config.decay_epoch = [20, 26, 32]
config.decay_rate = 0.1
