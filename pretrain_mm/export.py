"""`python -m pretrain_mm.export RUN_OR_CHECKPOINT OUT --format open_clip|safetensors`: weights to share.

open_clip: OUT/open_clip_config.json and OUT/open_clip_model.safetensors, which
`open_clip.create_model_and_transforms("local-dir:OUT")` builds and loads into a model with the
same embeddings as ours (interop/openclip.py; a conv-stem CLIP is refused by name).
safetensors: OUT/model.safetensors (our names, the run's config in its header) and
OUT/config.yaml, which `python -m pretrain_mm +exp=eval eval.checkpoint=OUT` evaluates.
Both copy the run's tokenizer file (tokenizer.json, Hugging Face tokenizers) unless it is
OpenAI CLIP's BPE, which open_clip has. No file is overwritten: OUT must be new or empty.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import cast

import torch
from omegaconf import OmegaConf

from pretrain_mm.cli_errors import one_line_error
from pretrain_mm.config import TOKENIZED_KINDS, plain_config

FORMATS = ("open_clip", "safetensors")


def export(source, out, fmt: str) -> list[Path]:
    """Write the files of `fmt` for the model of `source` (a run, a checkpoint or a .safetensors file)
    into the new or empty directory `out`; returns the paths written."""
    from safetensors.torch import save_file

    from pretrain_mm.builders import build_tokenizer
    from pretrain_mm.eval.loading import load_checkpoint_model
    from pretrain_mm.interop import MODEL_FILE, read_header, save_weights, to_open_clip
    from pretrain_mm.interop.weights import STEP_KEY
    from pretrain_mm.models import CLIP

    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty directory; export into a new one")
    model, cfg, read = load_checkpoint_model(source, torch.device("cpu"))
    if fmt == "open_clip":
        # refuses what open_clip cannot express (an MAE, a conv stem), before writing anything
        config, state = to_open_clip(cast(CLIP, model))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if fmt == "open_clip":
        written.append(out / "open_clip_config.json")
        written[-1].write_text(json.dumps(config, indent=1))
        written.append(out / "open_clip_model.safetensors")
        save_file({k: v.contiguous() for k, v in state.items()}, str(written[-1]), metadata={"format": "pt"})
    else:
        resolved = plain_config(cfg)
        if read.suffix == ".safetensors":
            step = read_header(read).get(STEP_KEY)
        else:
            step = read.name.removeprefix("step_") if read.name.startswith("step_") else None
        written.append(save_weights(out / MODEL_FILE, model.state_dict(), resolved, int(step) if step else None))
        written.append(out / "config.yaml")
        written[-1].write_text(OmegaConf.to_yaml(resolved))
    if cfg.model.kind in TOKENIZED_KINDS:
        tokenizer = build_tokenizer(cfg.data)
        if not tokenizer.clip_style and tokenizer.source and os.path.isfile(tokenizer.source):
            written.append(Path(shutil.copyfile(tokenizer.source, out / "tokenizer.json")))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pretrain_mm.export",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="a run directory, one of its checkpoints/step_<N>, or a .safetensors file")
    parser.add_argument("out", help="a new (or empty) directory")
    parser.add_argument("--format", choices=FORMATS, required=True)
    args = parser.parse_args(argv)
    try:
        written = export(args.source, args.out, args.format)
    except ValueError as error:
        return one_line_error(error)
    print("wrote " + ", ".join(str(p) for p in written))
    if args.format == "open_clip":
        print(f"load it with: open_clip.create_model_and_transforms('local-dir:{args.out}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
