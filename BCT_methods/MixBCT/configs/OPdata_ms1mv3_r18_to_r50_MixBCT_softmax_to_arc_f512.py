"""MixBCT, Open-data: old model on data30, new model on data70 (same identities, other images).
Old r18 softmax f512 -> new r50 ArcFace f512; old-model artifacts f512_r18_softmax_data70.

    torchrun --nproc_per_node=8 BCT_methods/MixBCT/train.py BCT_methods/MixBCT/configs/OPdata_ms1mv3_r18_to_r50_MixBCT_softmax_to_arc_f512.py
"""
from configs.ms1mv3 import grid_config

config = grid_config("data70", method="arcface", network="r50", embedding_size=512)
config.method = "MixBCT"
config.old_network = "r18"
config.old_embedding_size = 512

config.old_features = "feature_save/OPdata/f512_r18_softmax_data70_feature.npy"
config.credible_mask = "feature_save/OPdata/f512_r18_softmax_data70_credible_0.9.npy"
config.mix_ratio = 0.3
