"""Weights that leave pretrain_mm and come back: safetensors files (ours, and open_clip's layout).

    save_weights(path, model.state_dict(), config, step)     # model.safetensors, config in its header
    model, config = load_weights_model(path)                 # rebuilt from the header; never a pickle
    to_open_clip(model) -> (open_clip model_cfg, state dict)  # what `python -m pretrain_mm.export` writes

Imports models and builders only; train, eval and the export command import it.
"""

from pretrain_mm.interop.openclip import from_open_clip_state, open_clip_config, to_open_clip
from pretrain_mm.interop.weights import MODEL_FILE, load_weights, load_weights_model, read_header, save_weights

__all__ = [
    "MODEL_FILE",
    "from_open_clip_state",
    "load_weights",
    "load_weights_model",
    "open_clip_config",
    "read_header",
    "save_weights",
    "to_open_clip",
]
