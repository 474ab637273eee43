"""weakened L2, Open-data: old model on data30, new model on data70 (same identities, other images).
Old r18 softmax f512 -> new r50 ArcFace f512; old-model artifacts f512_r18_softmax_data70.

    torchrun --nproc_per_node=8 BCT_methods/L2/train.py BCT_methods/L2/configs/OPdata_ms1mv3_r18_to_r50_weakenedL2_softmax_to_arc_f512.py
"""
from configs.ms1mv3 import grid_config

config = grid_config("data70", method="arcface", network="r50", embedding_size=512)
config.method = "L2"
config.old_network = "r18"
config.old_embedding_size = 512

config.old_features = "feature_save/OPdata/f512_r18_softmax_data70_feature.npy"
config.l2_weight = 10.0
config.l2_threshold = 0.2          # weakened L2
