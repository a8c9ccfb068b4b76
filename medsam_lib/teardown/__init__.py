"""Taking SAM apart (paper 2.1-2.2), notebook 01: the architecture in numbers (``architecture``),
SAM's three prompt modes through segment-anything's own predictor (``modes``, with
``models.sam_adapter.PromptPredictor`` and the simulated clicks of ``medsam_lib.prompts``), and the
figures (``plots``)."""
from ..models.sam_adapter import PromptPredictor
from ..prompts import deepest_point
from .architecture import (COMPONENT_NAMES, COMPONENTS, FlopCount, architecture_table, count_flops, load_models,
                           parameter_counts, sam_vit_b, weights_note)
from .modes import (ModeResult, ThreeModes, box_mode, fig2_predictor, modes_table, multimask_outputs, multimask_summary,
                    multimask_table, point_mode, segment_everything, three_modes)
from .plots import plot_architecture, plot_multimask, plot_three_modes

__all__ = ["COMPONENT_NAMES", "COMPONENTS", "FlopCount", "ModeResult", "PromptPredictor", "ThreeModes",
           "architecture_table", "box_mode", "count_flops", "deepest_point", "fig2_predictor", "load_models",
           "modes_table", "multimask_outputs", "multimask_summary", "multimask_table", "parameter_counts", "plot_architecture",
           "plot_multimask", "plot_three_modes", "point_mode", "sam_vit_b", "segment_everything", "three_modes",
           "weights_note"]
