"""Tiny run directories (config.yaml, metrics.jsonl, a checkpoint) for the tests of the evaluator and its report."""

import json

import torch
from omegaconf import OmegaConf

from pretrain_mm.builders import model_from_config
from pretrain_mm.config import default_config
from pretrain_mm.distributed import DistInfo
from pretrain_mm.eval import EvalConfig
from pretrain_mm.precision import Precision
from pretrain_mm.train.checkpoint import Checkpointer
from pretrain_mm.train.loop import write_config

INFO = DistInfo(0, 1, 0, torch.device("cpu"))


def make_cfg(kind="clip", **eval_overrides):
    """A run config as the trainer resolves it (tiny model, 32 px) with a fast eval section."""
    cfg = default_config(kind)
    OmegaConf.set_struct(cfg, False)
    cfg.data.image_size, cfg.data.num_workers = 32, 0
    fast = dict(max_samples=120, batch_size=64, knn_k=[5, 10], examples=2, reconstructions=3, probe={"epochs": 5})
    cfg.eval = OmegaConf.merge(OmegaConf.structured(EvalConfig), fast, eval_overrides)
    return cfg


def save_run(run_dir, cfg):
    """A run directory as the trainer leaves it: config.yaml, metrics.jsonl, checkpoints/step_N."""
    torch.manual_seed(1)
    model = model_from_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir / "config.yaml", cfg, Precision(False, "fp32"))
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 5.0 / s, "lr": 1e-3}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo'
    )  # a torn last line
    optimizer = torch.optim.AdamW(model.parameters())
    return Checkpointer(run_dir / "checkpoints", INFO).save(3, model, optimizer, {"step": 3})
