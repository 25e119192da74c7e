"""pretrain_mm: distributed multimodal pretraining (CLIP, ViT-MAE) with a fused contrastive loss."""

__version__ = "0.1.0"
