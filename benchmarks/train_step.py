"""One training step of CNV-W1A1 several ways, side by side in one run: distillation with the
teacher run on the batch (what `--teacher` does), the same with the teacher quantized to 8 bits
(`--teacher-precision int8`), distillation from a bank of the teacher's outputs computed once
(`--kd-bank K`), and the labels alone (no teacher); each with the binary convolutions' forward
pass counted from sign bits (octoray/models/popcount.py, what training does on a CPU) and,
for the live teachers and the labels, with float convolutions (the same numbers, as before
the popcount path), and the int8 teacher's step with the counted convolutions' gradients in
bfloat16 (`--conv-gradients bf16`; on a CPU without AMX, emulated and slower), and the same two
with real weights (`--weights real`, a staged recipe's first stage).  Steps alternate, so a
busy machine slows all of them alike; prints medians and the paired ratios to the live
teacher's step with float convolutions, and the rate at which a bank is built.

    python benchmarks/train_step.py [--teacher training/teacher.npz] [--threads 2] [--pairs 15]

Needs the training extra: pip install '.[train]'.  Pause other work first (training too).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", type=Path, default=ROOT / "training" / "teacher.npz")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--pairs", type=int, default=15)
    args = p.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from octoray.models import kd_bank
    from octoray.models.cnv import CNV
    from octoray.engine.allocator import keep_freed_memory
    from octoray.models.runs import augment
    from octoray.models.teacher import load_teacher, quantized

    torch.set_num_threads(args.threads)
    keep_freed_memory(1 << 30)  # as training does
    torch.manual_seed(0)
    teacher, _ = load_teacher(args.teacher)
    images = torch.randint(0, 256, (2000, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (2000,))
    started = time.perf_counter()
    bank = kd_bank.build(teacher, images, variants=4, seed=1)
    built = time.perf_counter() - started
    teacher8 = quantized(teacher, augment(images, torch.Generator().manual_seed(2)))
    model = CNV().to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)

    def step(way: str) -> float:
        way, _, convs = way.partition(", ")
        model.count_popcounts(convs != "float convs")
        model.count_gradients_in(torch.bfloat16 if convs == "bf16 grads" else torch.float32)
        for layer in (*model.convs, *model.fcs):  # a staged recipe's first stage (--weights real)
            layer.binarize = way != "int8 real weights"
        began = time.perf_counter()
        index = torch.randint(0, len(images), (args.batch_size,), generator=generator)
        if way == "bank":
            x, taught = bank.sample(images, index, generator)
        else:
            x = augment(images[index], generator)
        x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x)
        loss = F.cross_entropy(logits, labels[index])
        if way != "labels":
            with torch.no_grad():
                if way != "bank":
                    taught = (teacher8 if way.startswith("int8") else teacher)(x)
                soft = F.softmax(taught, dim=1)
            loss = 0.1 * loss + 0.9 * F.kl_div(F.log_softmax(logits, dim=1), soft, reduction="batchmean")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.clip_weights()
        return time.perf_counter() - began

    ways = ("live, float convs", "live", "int8, float convs", "int8", "int8, bf16 grads", "int8 real weights",
            "int8 real weights, bf16 grads", "bank", "labels, float convs", "labels")
    baseline = ways[0]
    for way in ways * 3:  # warm-up
        step(way)
    times = {way: [] for way in ways}
    for _ in range(args.pairs):
        for way in ways:
            times[way].append(step(way))
    def paired(way: str, other: str) -> float:
        return statistics.median(t / o for t, o in zip(times[way], times[other]))

    from octoray.models.popcount import bf16_is_native

    print(f"batch {args.batch_size}, {args.threads} threads, {args.pairs} rounds, "
          f"AMX {'yes' if bf16_is_native() else 'no'}")
    print(f"bank building: {len(images) * 4 / built:.0f} teacher forwards/s")
    for way in ways:
        line = (f"{way:>29}: {1000 * statistics.median(times[way]):6.0f} ms a step, "
                f"paired ratio to {baseline} {paired(way, baseline):.2f}")
        if f"{way}, float convs" in times:
            line += f", to its float convs {paired(way, f'{way}, float convs'):.2f}"
        if way.endswith(", bf16 grads"):
            line += f", to its float32 gradients {paired(way, way.partition(',')[0]):.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
