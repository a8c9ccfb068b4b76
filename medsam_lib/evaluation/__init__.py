"""Evaluation: DSC and NSD (paper 3.3), box-prompted 2D and slice-by-slice 3D inference on a curated
store, Tables 1-2 and the failure figures (notebooks 05 and 06); pinned prompts (``pinned``), and beyond the
paper's ideal boxes: an annotator model (``annotator``), calibration of the predicted IoU (``calibration``) and a
correction loop of simulated clicks (``correction``), on one slice per target (``targets``).

    from medsam_lib.evaluation import dice, nsd
"""
from .metrics import check_pair, dice, nsd, score, spacing_from_xyz, surface_distances

__all__ = ["check_pair", "dice", "nsd", "score", "spacing_from_xyz", "surface_distances"]
