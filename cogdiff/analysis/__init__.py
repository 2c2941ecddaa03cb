"""Looking inside U-ViT / U-ViC models: attention-weight capture, negativity and collapse measures, training
diagnostics on a fixed probe batch, plots.

Nothing here runs at import; plots use a per-figure Agg canvas.
"""

from .diagnostics import Probe, attention_stats, block_stats, diagnostics_row, loss_by_t, make_probe
from .hooks import (
    AttentionCapture,
    AttentionRecord,
    BlockOutputs,
    attention_hooks,
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
    "Probe",
    "Run",
    "attention_hooks",
    "attention_stats",
    "attention_weights_from_qkv",
    "block_stats",
    "capture_attention",
    "capture_block_outputs",
    "diagnostics_row",
    "load_run",
    "load_runs",
    "loss_by_t",
    "make_probe",
    "mean_pairwise_cosine",
    "negative_stats",
    "negative_stats_table",
    "query_attention_map",
    "series",
    "similarity_by_depth",
    "token_similarity",
]
