"""Defaults for every training config (old models, independent new models, the six methods).

A config file sets only what differs from here. A key that is not defined here is an error
(with a "did you mean" hint), so every knob of the library is listed, once, in this file.
Relative paths resolve against the repository root, whatever the working directory.
"""
from easydict import EasyDict as edict

config = edict()

# ---- what to train -------------------------------------------------------------------------
config.method = "arcface"          # arcface | softmax | L2 | BCT | UniBCT | NCCL | AdvBCT | MixBCT
config.network = "r50"             # see backbones.get_model
config.embedding_size = 512
config.gradient_checkpointing = False

# ---- data ------------------------------------------------------------------------------------
config.rec = None                  # folder with train.rec / train.idx / property (or an image folder)
config.num_classes = None          # checked against the data at start-up
config.num_image = None            # checked against the data at start-up
config.val_targets = []            # names of .bin sets next to train.rec, e.g. ["lfw", "cfp_fp"]
config.num_workers = 4
config.synthetic = False           # train on random device tensors (throughput tests only)

# ---- head (ArcFace through Partial FC, or softmax for old softmax models) -------------------
config.head = "partial_fc"         # partial_fc | softmax
config.margin_list = (1.0, 0.5, 0.0)   # combined margin (m1, m2, m3): cos(m1*theta + m2) - m3
config.scale = 64.0                # s
config.sample_rate = 1.0           # Partial FC negative-class sampling rate
config.interclass_filtering_threshold = 0.0

# ---- optimisation ----------------------------------------------------------------------------
config.optimizer = "sgd"           # sgd | adamw
config.lr = 0.1
config.momentum = 0.9
config.weight_decay = 5e-4
config.batch_size = 128            # per process
config.gradient_accumulation_steps = 1
config.num_epoch = 20
config.warmup_epoch = 0             # the reference's BCT / UniBCT configs: -1 (see utils/training/schedulers.py)
config.reference_negative_warmup = True  # warmup_epoch < 0 gives the reference's ((T - t) / (T + S))^2
config.lr_schedule = "poly"        # poly | step
config.poly_power = 2.0            # the reference PolyScheduler uses power 2
config.decay_epoch = []            # step schedule: multiply by decay_rate after each of these epochs
config.decay_rate = 0.1
config.clip_grad_norm = 5.0        # on the backbone; None or 0 disables
config.fp16 = False                # AMP float16 with a GradScaler
config.bf16 = False                # AMP bfloat16 (no scaler)
config.amp_on_cpu = False          # run fp16 autocast + GradScaler on the CPU too (tests of the AMP path)
config.freeze_batchnorm = False    # BatchNorm layers keep their running statistics (W ranks = 1 process exactly)
config.seed = 666                  # each rank uses seed + rank
config.deterministic = False
config.channels_last = False
config.compile = False

# ---- output, logging, checkpoints -----------------------------------------------------------
config.output = None               # default: work_dirs/<config file name>
config.frequent = 10               # log every N steps
config.verbose = 2000              # run the .bin verification every N steps
config.save_every_steps = 0        # full-state checkpoint every N steps (0: epoch ends only)
config.save_all_states = True
config.resume = False
config.tensorboard = True

# ---- method inputs (artifacts written by tools/, each with a JSON manifest) -----------------
config.old_network = None          # the old backbone, recorded for the guards
config.old_embedding_size = None
config.old_features = None         # [N, d_old] .npy, row i = dataset index i
config.old_labels = None           # [N] .npy
config.class_prototypes = None     # [C, d_old] .npy (BCT, UniBCT)
config.credible_mask = None        # [N] .npy of 0/1 (MixBCT)
config.class_meta = None           # .npz with center / radius per class (AdvBCT)

# ---- L2 / weakened L2 ------------------------------------------------------------------------
config.l2_weight = 10.0
config.l2_threshold = 0.0          # 0: L2; 0.2: weakened L2

# ---- BCT / UniBCT ---------------------------------------------------------------------------
config.bct_weight = 1.0
config.bct_scale = 1.0             # the reference applies no scale to the cosine logits
config.unibct_start_epoch = 10     # influence weight 0 before this epoch
config.unibct_refine_epochs = (10, 20)
config.unibct_tau = 0.05
config.unibct_lambda = 0.9
config.unibct_refine_batch_size = 256

# ---- NCCL ------------------------------------------------------------------------------------
config.nccl_queue_size = 8192
config.nccl_alpha = 1.0
config.nccl_beta = 0.01
config.nccl_temperature = 1.0
config.nccl_clamp_logits_quirk = True   # reference: with fp16 the z logits are clamped to [-1, 1]
config.nccl_entropy_filter = None       # optional "highly credible" filter threshold (off)
config.nccl_logit_term_gradient = False  # reference: z_new reaches l2 through a gradient-free all_gather
config.nccl_reference_world_size_factor = False  # reference: l1's gradient x world size (weight alpha * W)

# ---- AdvBCT ----------------------------------------------------------------------------------
config.advbct_boundary_threshold = 0.4
config.advbct_p2s_weight = 4.0
config.advbct_adv_weight = 4.0
config.advbct_hidden = 100

# ---- MixBCT ----------------------------------------------------------------------------------
config.mix_ratio = 0.3
