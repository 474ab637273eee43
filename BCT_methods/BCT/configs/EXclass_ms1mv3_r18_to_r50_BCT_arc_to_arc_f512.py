"""BCT, Extended-class: old model on class30, new model on all of MS1M-V3 (class100).
Old r18 ArcFace f512 -> new r50 ArcFace f512; old-model artifacts f512_r18_arc_class100.

    torchrun --nproc_per_node=8 BCT_methods/BCT/train.py BCT_methods/BCT/configs/EXclass_ms1mv3_r18_to_r50_BCT_arc_to_arc_f512.py
"""
from configs.ms1mv3 import grid_config

config = grid_config("class100", method="arcface", network="r50", embedding_size=512)
config.method = "BCT"
config.old_network = "r18"
config.old_embedding_size = 512

config.class_prototypes = "feature_save/EXclass/f512_r18_arc_class100_avg_feature.npy"
config.bct_weight = 1.0
config.bct_scale = 1.0             # no scale on the cosine logits, as the reference
