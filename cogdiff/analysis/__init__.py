"""Looking inside U-ViT / U-ViC models: attention-weight capture, negativity and collapse measures, plots.

Nothing here runs at import; plots use a per-figure Agg canvas.
"""

from .hooks import (
    AttentionCapture,
    AttentionRecord,
    BlockOutputs,
    attention_weights_from_qkv,
    capture_attention,
    capture_block_outputs,
)
from .measures import (
    NegativeStatsTable,
    mean_pairwise_cosine,
    negative_stats,
    negative_stats_table,
    query_attention_map,
    similarity_by_depth,
    token_similarity,
)
from .runs import Run, load_run, load_runs, series

__all__ = [
    "AttentionCapture",
    "AttentionRecord",
    "BlockOutputs",
    "NegativeStatsTable",
    "Run",
    "attention_weights_from_qkv",
    "capture_attention",
    "capture_block_outputs",
    "load_run",
    "load_runs",
    "mean_pairwise_cosine",
    "negative_stats",
    "negative_stats_table",
    "query_attention_map",
    "series",
    "similarity_by_depth",
    "token_similarity",
]
