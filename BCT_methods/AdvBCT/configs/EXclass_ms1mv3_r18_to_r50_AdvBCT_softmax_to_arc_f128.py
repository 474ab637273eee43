"""AdvBCT, Extended-class: old model on class30, new model on all of MS1M-V3 (class100).
Old r18 softmax f128 -> new r50 ArcFace f128; old-model artifacts f128_r18_softmax_class100.

    torchrun --nproc_per_node=8 BCT_methods/AdvBCT/train.py BCT_methods/AdvBCT/configs/EXclass_ms1mv3_r18_to_r50_AdvBCT_softmax_to_arc_f128.py
"""
from configs.ms1mv3 import grid_config

config = grid_config("class100", method="arcface", network="r50", embedding_size=128)
config.method = "AdvBCT"
config.old_network = "r18"
config.old_embedding_size = 128

config.old_features = "feature_save/EXclass/f128_r18_softmax_class100_feature.npy"
config.class_meta = "feature_save/EXclass/f128_r18_softmax_class100_class_meta.npz"
config.advbct_boundary_threshold = 0.4
config.advbct_p2s_weight = 4.0
config.advbct_adv_weight = 4.0
