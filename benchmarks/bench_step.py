"""What each training-step change buys: one CLIP step with and without it, interleaved in one run.

    python benchmarks/bench_step.py                          # tiny at 64 px, batch 64, fp32, CPU
    python benchmarks/bench_step.py --size small --batch 128 --device cuda

Variants (each a fresh model, seed 0, the same random batch; captions 4-18 tokens long in a
32-token context, like the built-in stamps captions):
  before      what the trainer did before wave 2: the text tower on every padded column, the
              for-loop AdamW
  trim        the text tower cut after the batch's longest caption (exact under the causal mask)
  fused       torch's fused AdamW
  trim+fused  both (the trainer's default now)
  +compile    both, and torch.compile of every transformer block (trainer.compile=true)
Rounds go through the variants in turn, so slow and fast moments of a shared machine fall on all
of them; the table gives each variant's median step and its speed-up over `before`.
"""

import argparse
import statistics
import time


def variant(name, args, images, text, device):
    import torch

    from pretrain_mm.models import build_model
    from pretrain_mm.ops import contrastive_loss
    from pretrain_mm.train.optimizer import weight_decay_groups
    from pretrain_mm.train.parallelize import apply_compile

    torch.manual_seed(0)
    model = build_model("clip", args.size, image_size=args.image_size, vocab_size=1024, context_length=32).to(device)
    if "compile" in name:
        apply_compile(model)
    fused = "fused" in name or "compile" in name
    # the for-loop AdamW is what torch picks on the CPU when neither is asked for
    optimizer = torch.optim.AdamW(
        weight_decay_groups(model, 0.1), lr=1e-4, **({"fused": True} if fused else {"foreach": False})
    )
    if name in ("before", "fused"):  # a non-pad id in the last column: nothing can be cut, as before
        text = text.clone()
        text[:, -1] = 1

    def step():
        out = model(images, text)
        loss = contrastive_loss(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def main():
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant and round")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()

    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g).to(device)
    lengths = torch.randint(4, 19, (args.batch,), generator=g)
    text = torch.randint(1, 1023, (args.batch, 32), generator=g)
    text[torch.arange(32)[None, :] >= lengths[:, None]] = 0
    text[torch.arange(args.batch), lengths - 1] = 1023  # the end-of-text id
    text = text.to(device)

    names = ["before", "trim", "fused", "trim+fused", "+compile"]
    steps = {}
    for name in names:
        steps[name] = variant(name, args, images, text, device)
        t0 = time.perf_counter()
        steps[name]()  # warm-up (for +compile, the compilation)
        if name == "+compile":
            print(f"+compile: first step (compiling) {time.perf_counter() - t0:.1f} s", flush=True)
    times = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                steps[name]()
            times[name].append((time.perf_counter() - t0) / args.steps)

    base = statistics.median(times["before"])
    print(
        f"\nCLIP {args.size} at {args.image_size} px, batch {args.batch}, fp32 on {args.device} "
        f"({torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads), "
        f"{args.rounds} rounds x {args.steps} steps"
    )
    print("| variant | median step (ms) | samples/s | vs before |\n| --- | --- | --- | --- |")
    for name in names:
        median = statistics.median(times[name])
        print(f"| {name} | {median * 1e3:.0f} | {args.batch / median:.1f} | {base / median:.2f}x |")


if __name__ == "__main__":
    main()
