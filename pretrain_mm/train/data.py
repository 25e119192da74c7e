"""The training loader of a config: built-in datasets or the user's shards, split over ranks.

Images come as uint8: the trainer normalises one micro-batch at a time (`loader.normalize`)."""

from pretrain_mm.builders import build_tokenizer, split_urls
from pretrain_mm.data import build_loader


def build_train_loader(cfg, info, per_rank_batch: int):
    d = cfg.data
    return build_loader(
        split_urls(d, "train"), batch_size=per_rank_batch,
        tokenizer=build_tokenizer(d) if cfg.model.kind == "clip" else None,
        image_size=d.image_size, train=True, num_workers=d.num_workers, seed=cfg.trainer.seed, resampled=True,
        rank=info.rank, world_size=info.world_size, image_key=d.image_key, caption_key=d.caption_key,
        label_key=d.label_key, shuffle_buffer=d.shuffle_buffer, hflip=d.hflip, drop_last=True, normalize=False)
