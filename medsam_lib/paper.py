"""The paper's constants, one source of truth each, with the section of the paper beside it.

MedSAM: "Segment Anything in Medical Images", Ma & Wang, arXiv:2304.12306 v1 (2023).
Where the released MedSAM code differs, the released value sits beside the paper's value under an
``OFFICIAL_CODE_`` name; the paper's value is the default everywhere in ``medsam_lib``.
"""
from __future__ import annotations

# --- 3.1 Data preprocessing ---------------------------------------------------------------------
CT_WINDOW_HU = (-500.0, 1000.0)  # 3.1: CT intensities clipped to [-500, 1000]
OFFICIAL_CODE_CT_WINDOW_LEVEL_WIDTH = (40.0, 400.0)  # released pre_CT_MR.py: level 40, width 400 -> [-160, 240]
PERCENTILES = (0.5, 99.5)  # 3.1: other modalities clipped at the 0.5th / 99.5th percentiles
INTENSITY_RANGE = (0.0, 255.0)  # 3.1: then scaled to [0, 255]
CURATED_IMAGE_SIZE = 256  # 3.1: images resized to 256 x 256 x 3
ENCODER_IMAGE_SIZE = 1024  # 3.1 / 2.1: the ViT-B encoder takes 3 x 1024 x 1024
LITE_IMAGE_SIZE = 256  # LiteMedSAM (released code): longest side to 256, padded, min-max to [0, 1]

# --- 3.2 Training set -----------------------------------------------------------------------------
TRAIN_FRACTION = 0.8  # 3.2: per data set 80/20 train/test split (by case)
MIN_TARGET_PIXELS = 100  # 3.2: targets under 100 pixels excluded (2D, at 256 x 256)
OFFICIAL_CODE_MIN_OBJECT_VOXELS_3D = 1000  # released code: 3D objects under 1000 voxels removed (cc3d.dust)
OFFICIAL_CODE_MIN_OBJECT_PIXELS_2D = 100  # released code: then 2D objects under 100 px per slice, native size
BOX_JITTER_PX = (0, 20)  # 3.2: box from the mask, each side perturbed by a random 0-20 px
LEARNING_RATE = 1e-5  # 3.2: Adam, initial learning rate 1e-5
WEIGHT_DECAY = 0.0  # 3.2 / v1 train.py: no weight decay
BATCH_SIZE = 8  # v1 train.py

# --- 3.3 Evaluation -------------------------------------------------------------------------------
NSD_TOLERANCE_MM = 1.0  # 3.3: normalised surface distance at 1 mm tolerance

# --- 2.3 Model --------------------------------------------------------------------------------------
MULTIMASK_OUTPUT = False  # 2.3: one mask per box (a box is unambiguous)
MASK_THRESHOLD = 0.5  # probability threshold on sigmoid(logits), as the released inference code

# SAM's own input normalisation (used by v1 and the paper through Sam.preprocess), on 0-255 RGB.
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
