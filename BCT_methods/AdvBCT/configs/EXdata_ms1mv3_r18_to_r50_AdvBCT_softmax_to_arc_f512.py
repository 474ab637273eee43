"""AdvBCT, Extended-data: old model on data30, new model on all of MS1M-V3 (data100).
Old r18 softmax f512 -> new r50 ArcFace f512; old-model artifacts f512_r18_softmax_data100.

    torchrun --nproc_per_node=8 BCT_methods/AdvBCT/train.py BCT_methods/AdvBCT/configs/EXdata_ms1mv3_r18_to_r50_AdvBCT_softmax_to_arc_f512.py
"""
from configs.ms1mv3 import grid_config

config = grid_config("data100", method="arcface", network="r50", embedding_size=512)
config.method = "AdvBCT"
config.old_network = "r18"
config.old_embedding_size = 512

config.old_features = "feature_save/EXdata/f512_r18_softmax_data100_feature.npy"
config.class_meta = "feature_save/EXdata/f512_r18_softmax_data100_class_meta.npz"
config.advbct_boundary_threshold = 0.4
config.advbct_p2s_weight = 4.0
config.advbct_adv_weight = 4.0
