"""The training loader of a config: built-in datasets or the user's shards, split over ranks.

Images come as uint8: the trainer normalises one micro-batch at a time (`loader.normalize`).

Shards are drawn with replacement, so an "epoch" of the stream is only the unit its workers are
started and seeded for. It lasts `trainer.checkpoint_every` steps: the workers live from one
checkpoint to the next (on a small set, an epoch of its own size restarted them every few steps,
3% of the step time on 2 cores). An epoch is dealt to the workers in whole rounds, so when
checkpoint_every is a multiple of data.num_workers a scheduled checkpoint falls on an epoch's end
and resuming from it replays nothing; otherwise, and from a checkpoint written on a stop signal,
a run resumes mid-epoch (exactly, by replaying the epoch's raw samples undecoded).
"""

from pretrain_mm.builders import build_tokenizer, split_urls
from pretrain_mm.data import build_loader


def build_train_loader(cfg, info, per_rank_batch: int):
    d, t = cfg.data, cfg.trainer
    return build_loader(
        split_urls(d, "train"), batch_size=per_rank_batch,
        tokenizer=build_tokenizer(d) if cfg.model.kind == "clip" else None,
        image_size=d.image_size, train=True, num_workers=d.num_workers, seed=t.seed, resampled=True,
        samples_per_epoch=t.checkpoint_every * per_rank_batch * info.world_size,
        rank=info.rank, world_size=info.world_size, image_key=d.image_key, caption_key=d.caption_key,
        label_key=d.label_key, shuffle_buffer=d.shuffle_buffer, hflip=d.hflip, drop_last=True, normalize=False,
        hard_negatives=d.hard_negatives)
