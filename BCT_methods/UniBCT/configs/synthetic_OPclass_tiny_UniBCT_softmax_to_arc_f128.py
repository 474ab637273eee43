"""python BCT_methods/UniBCT/train.py BCT_methods/UniBCT/configs/synthetic_OPclass_tiny_UniBCT_softmax_to_arc_f128.py"""
from configs.synthetic import synthetic_compatible_config

config = synthetic_compatible_config("UniBCT")
config.bct_weight = 1.0
config.unibct_start_epoch = 3          # the reference's 35 epochs scaled to 10: 10, 20 -> 3, 6
config.unibct_refine_epochs = (3, 6)
config.unibct_tau = 0.05
config.unibct_lambda = 0.9
config.lr_schedule = "step"         # UniBCT: step decay (its own lr_lambda), not poly
config.decay_rate = 0.1
# Three decays as the reference (20, 26, 32 of 35), placed so that the learning rate summed over
# the run equals the poly schedule's of the other new models: 3 + 0.3 + 0.03 + 0.001 = 3.331
# epochs at lr 0.1 against 10 / 3 = 3.333 (the reference's epochs scaled, 6, 7, 9, would give
# 6.13: 1.84x the others' budget). tools/demo/run_demo.py prints both budgets.
config.decay_epoch = [3, 6, 9]
