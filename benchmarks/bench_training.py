"""Overhead of ``nnteleport.lab.training.train`` against a bare hand-written PyTorch loop, measured side by side.

Same model (MLP 64-128-128-10), data (digits, 1437 training images), batch size, optimizer and epochs; the bare
loop slices tensors the same way (no DataLoader). Also: the bare ``Trainer`` loop with one callback (the cost of
the callback machinery itself), the cost of a checkpoint per epoch, of a progress bar, and of a teleport at
initialisation, and the DataLoader path of ``nnteleport.lab.data.loader`` for comparison.

    python -m benchmarks.bench_training [--json PATH]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks._results import Recorder, add_json_option
from nnteleport.lab.data import load_dataset, loader
from nnteleport.lab.training import RecordHistory, Trainer, train

EPOCHS = 5
BS = 64
REPEATS = 3


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, 10))  # fmt: skip


def bare(data) -> None:
    m = model()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    x_all, y_all = data.train.x, data.train.y
    for _ in range(EPOCHS):
        perm = torch.randperm(len(x_all), generator=g)
        for i in range(0, len(x_all), BS):
            idx = perm[i : i + BS]
            opt.zero_grad()
            loss = F.cross_entropy(m(x_all[idx]), y_all[idx])
            loss.backward()
            opt.step()
        with torch.no_grad():
            F.cross_entropy(m(data.val.x), data.val.y)


def trainer_only(data) -> None:
    """The callback loop with nothing but the per-step recording (no evaluation, schedule or penalty)."""
    trainer = Trainer(model(), data.train, optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.01),
                      batch_size=BS, callbacks=[RecordHistory()])  # fmt: skip
    trainer.fit(EPOCHS)


def with_dataloader(data) -> None:
    m = model()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    dl = loader(data.train, BS, seed=0)
    for _ in range(EPOCHS):
        for x, y in dl:
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()


def best(fn) -> float:
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_json_option(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rec = Recorder("bench_training", argv, {"epochs": EPOCHS, "batch_size": BS, "repeats": REPEATS, "threads": 1})
    data = load_dataset("digits")
    kw = dict(epochs=EPOCHS, batch_size=BS, lr=0.01, progress=False)
    train(model(), data, **kw)  # warm-up (first optimizer step imports torch._dynamo)
    t_bare = best(lambda: bare(data))
    t_trainer = best(lambda: trainer_only(data))
    t_train = best(lambda: train(model(), data, **kw))
    with tempfile.TemporaryDirectory() as d:
        counter = iter(range(10**6))
        t_ckpt = best(lambda: train(model(), data, checkpoint_dir=f"{d}/{next(counter)}", **kw))
    t_bar = best(lambda: train(model(), data, **{**kw, "progress": True}))
    try:
        t_tp = best(lambda: train(model(), data, teleport_at=0, **kw))
    except Exception as e:  # engine missing
        t_tp = float("nan")
        print(f"(teleport run failed: {e})")
    t_dl = best(lambda: with_dataloader(data))
    n_iter = EPOCHS * -(-len(data.train) // BS)
    print(f"digits MLP, {EPOCHS} epochs x {n_iter // EPOCHS} iterations, batch {BS}, 1 thread, best of {REPEATS}")
    print(f"  bare loop (tensor slicing)          {t_bare:7.3f} s   1.00x")
    print(f"  Trainer + RecordHistory only        {t_trainer:7.3f} s   {t_trainer / t_bare:.2f}x")
    print(f"  train()                             {t_train:7.3f} s   {t_train / t_bare:.2f}x")
    print(f"  train() + checkpoint every epoch    {t_ckpt:7.3f} s   {t_ckpt / t_bare:.2f}x")
    print(f"  train() + progress bar              {t_bar:7.3f} s   {t_bar / t_bare:.2f}x")
    print(f"  train() + teleport at init          {t_tp:7.3f} s   {t_tp / t_bare:.2f}x")
    print(f"  bare loop over a torch DataLoader   {t_dl:7.3f} s   {t_dl / t_bare:.2f}x  (per-sample collate)")
    seconds = {"bare": t_bare, "trainer_only": t_trainer, "train": t_train, "train_checkpoint": t_ckpt,
               "train_progress": t_bar, "train_teleport": t_tp, "dataloader": t_dl}  # fmt: skip
    rec.write(args.json, {"iterations": n_iter, "seconds": seconds,
                          "ratio": {k: v / t_bare for k, v in seconds.items()}})  # fmt: skip


if __name__ == "__main__":
    main()
