"""Fine-tuning on 2 gloo ranks: torch's DDP averages the gradients, so both ranks, each training on its half of
every batch, end with the same classifier and predict alike."""

import torch

from helpers.clip_benchmark_dirs import classification_dir
from helpers.multiprocess import run_distributed
from pretrain_mm.config import EvalConfig, FinetuneConfig
from pretrain_mm.eval import finetune as finetune_module
from pretrain_mm.eval.datasets import clip_benchmark_set
from pretrain_mm.models import build_model


def _finetune(rank, world_size, directory):
    made = []

    class Recorded(finetune_module.Classifier):  # keeps the classifier fine-tuning trains, to compare its weights
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.initial_head = self.head.weight.detach().clone()
            made.append(self)

    finetune_module.Classifier = Recorded  # this spawned process's module only
    torch.manual_seed(0)  # the same tower on every rank, as evaluation loads it
    model = build_model("mae", "tiny", image_size=32)
    finetune_cfg = FinetuneConfig(enabled=True, epochs=2, batch_size=4, warmup_epochs=0, lr=1e-2)
    eval_cfg = EvalConfig(batch_size=4, num_workers=0, max_samples=0)
    metrics, predictions, labels = finetune_module.finetune(
        model, clip_benchmark_set(directory), 3, 12, finetune_cfg, eval_cfg, 32, torch.device("cpu")
    )
    trained = {name: p.detach() for name, p in made[0].named_parameters()}
    return metrics, predictions, labels, trained, made[0].initial_head


def test_ranks_fine_tune_one_classifier(tmp_path):
    directory = classification_dir(tmp_path / "set")
    first, second = run_distributed(_finetune, 2, tmp_path, directory)
    assert first[0] == second[0] and torch.equal(first[1], second[1]) and len(first[2]) == 10
    assert not torch.equal(first[3]["head.weight"], first[4])  # it did train
    for name, weight in first[3].items():  # bit for bit: the same averaged gradient on both ranks
        assert torch.equal(weight, second[3][name]), name
