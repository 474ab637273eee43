"""Independent new model of the demo (extended-class scenario):
tiny_s CPU network, ArcFace head (s = 32), 128-d features, on the synthetic set written by
tools/synthetic (class and image counts are read from the data).

    python train_old_arc.py configs/synthetic_f128_tiny_s_arc_class100.py
"""
from configs.synthetic import synthetic_new_config

config = synthetic_new_config("")
