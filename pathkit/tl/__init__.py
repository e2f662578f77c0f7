"""Tools: embedding, cohorts, ABMIL, survival, zero-shot, UMAP."""
from . import prompts
from ._associate import associate
from ._composition import tile_composition
from ._expression import predict_expression
from ._pathways import pathway_scores
from ._probe import compare_encoders, probe
from .abmil import train_abmil
from .cohort import embed_cohort
from .embed import embed_tiles
from .slide_embed import embed_slide
from .survival import cindex, cox, kaplan_meier, logrank, risk_groups
from .umap import umap
from .zeroshot import text_embeddings, topk_pool, zero_shot, zero_shot_eval

__all__ = [
           "associate",
           "cindex",
           "compare_encoders",
           "cox",
           "embed_cohort",
           "embed_slide",
           "embed_tiles",
           "kaplan_meier",
           "logrank",
           "pathway_scores",
           "predict_expression",
           "probe",
           "prompts",
           "risk_groups",
           "text_embeddings",
           "tile_composition",
           "topk_pool",
           "train_abmil",
           "umap",
           "zero_shot",
           "zero_shot_eval",
]
