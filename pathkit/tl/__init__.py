"""Tools: embedding, cohorts, MIL, survival, zero-shot, UMAP."""
from .embed import embed_tiles
from .slide_embed import embed_slide
from .cohort import embed_cohort
from ._mil.estimator import MIL
from ._mil.cv import MILCVResult, cross_validate_mil
from .survival import cindex, cox, kaplan_meier, logrank, risk_groups
from .zeroshot import text_embeddings, topk_pool, zero_shot, zero_shot_eval
from . import prompts
from ._umap import umap
from ._annotate import annotate_tiles
from ._pathways import pathway_scores
from ._associate import associate
from ._composition import tile_composition
from ._probe import compare_encoders, probe
from ._expression import predict_expression
from .slide_text import caption, text_search
from ._site import harmonize, site_effect
from ..cells import segment_cells  # issue 23: cells
from ..cells._aggregate import cell_composition
from ..spatial import map_spots
from ..spatial import predicted_expression_by_slide

__all__ = ["embed_tiles", "embed_slide", "embed_cohort", "kaplan_meier", "logrank", "cox", "cindex",
           "risk_groups", "zero_shot", "zero_shot_eval", "topk_pool", "text_embeddings", "prompts", "umap",
           "annotate_tiles", "MIL", "MILCVResult", "cross_validate_mil", "pathway_scores", "associate",
           "tile_composition", "probe", "compare_encoders", "predict_expression", "text_search", "caption",
           "site_effect", "harmonize", "segment_cells", "cell_composition", "map_spots",
           "predicted_expression_by_slide"]
