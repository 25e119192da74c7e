"""Evaluation: features, zero-shot, retrieval, linear probe, k-NN, fine-tune, and the report.

    from pretrain_mm.eval import run_evaluation, evaluate_checkpoint
    results = run_evaluation(cfg, run_dir, model, info)     # the model in memory (end of training)
    results = evaluate_checkpoint(cfg, info)                # cfg.eval.checkpoint: a run dir or step_<N>

Both write <run dir>/report/ (results.json, report.md, report.html) on rank 0 and return the
results dict on every rank. The evaluators also work alone on tensors: zeroshot_classifier /
zeroshot_evaluate, retrieval_recall, linear_probe, knn_evaluate.
"""

from pretrain_mm.config import EvalConfig, FinetuneConfig, ProbeConfig, WdsEvalConfig
from pretrain_mm.distributed import gather_rows
from pretrain_mm.eval.datasets import EvalSet, clip_benchmark_set, eval_sets
from pretrain_mm.eval.features import Features, extract_features
from pretrain_mm.eval.knn import knn_evaluate, knn_predict
from pretrain_mm.eval.linear_probe import linear_probe, train_linear_probe
from pretrain_mm.eval.loading import load_checkpoint_model
from pretrain_mm.eval.retrieval import retrieval_recall
from pretrain_mm.eval.runner import evaluate_checkpoint, run_evaluation
from pretrain_mm.eval.zeroshot import zeroshot_classifier, zeroshot_evaluate

__all__ = [
    "EvalConfig",
    "EvalSet",
    "Features",
    "FinetuneConfig",
    "ProbeConfig",
    "WdsEvalConfig",
    "clip_benchmark_set",
    "eval_sets",
    "evaluate_checkpoint",
    "extract_features",
    "gather_rows",
    "knn_evaluate",
    "knn_predict",
    "linear_probe",
    "load_checkpoint_model",
    "retrieval_recall",
    "run_evaluation",
    "train_linear_probe",
    "zeroshot_classifier",
    "zeroshot_evaluate",
]
