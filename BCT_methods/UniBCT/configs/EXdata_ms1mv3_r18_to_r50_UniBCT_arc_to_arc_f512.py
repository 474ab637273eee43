"""UniBCT, Extended-data: old model on data30, new model on all of MS1M-V3 (data100).
Old r18 ArcFace f512 -> new r50 ArcFace f512; old-model artifacts f512_r18_arc_data100.

    torchrun --nproc_per_node=8 BCT_methods/UniBCT/train.py BCT_methods/UniBCT/configs/EXdata_ms1mv3_r18_to_r50_UniBCT_arc_to_arc_f512.py
"""
from configs.ms1mv3 import grid_config

config = grid_config("data100", method="arcface", network="r50", embedding_size=512)
config.method = "UniBCT"
config.old_network = "r18"
config.old_embedding_size = 512

config.old_features = "feature_save/EXdata/f512_r18_arc_data100_feature.npy"
config.class_prototypes = "feature_save/EXdata/f512_r18_arc_data100_avg_feature.npy"
config.bct_weight = 1.0
config.unibct_start_epoch = 10
config.unibct_refine_epochs = (10, 20)
config.unibct_tau = 0.05
config.unibct_lambda = 0.9
config.lr_schedule = "step"         # UniBCT: step decay (its own lr_lambda), not poly
config.decay_epoch = [20, 26, 32]
config.decay_rate = 0.1
