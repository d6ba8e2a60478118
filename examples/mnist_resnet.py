"""Train a small ResNet on MNIST and report test accuracy: conv-bn-relu blocks with identity and
strided 1x1 projection shortcuts, a 3x3 stride-2 max-pool stem, global average pooling; AdamW with
a cosine learning-rate schedule and gradient clipping, all inside drug's compiled train step.
`--torch` then trains the identical network with PyTorch (same initial parameters, minibatches,
optimizer, schedule and thread count) and prints both side by side."""

from __future__ import annotations

import numpy as np
from common import (
    Clock,
    batch_count,
    end_of_epoch,
    example_parser,
    finish,
    minibatches,
    run_with_twin,
    shifted,
    track_loss,
)
from tqdm import tqdm

import drug as dg


def conv_bn(h, filters: int, kernel: int, stride: int, name: str):
    """Convolution without bias (batch norm's shift replaces it), then batch norm."""
    h = dg.layers.Conv2D(filters, kernel, stride=stride, padding=kernel // 2, bias=False, name=f"{name}/conv")(h)
    return dg.layers.BatchNorm(name=f"{name}/bn")(h)


def residual_block(h, filters: int, stride: int, name: str):
    """relu(bn(conv(relu(bn(conv(h))))) + shortcut): the shortcut is h itself, or a strided 1x1
    convolution (with batch norm) where the block changes the size or the channels."""
    y = dg.relu(conv_bn(h, filters, 3, stride, f"{name}/a"))
    y = conv_bn(y, filters, 3, 1, f"{name}/b")
    shortcut = h if stride == 1 and h.shape[1] == filters else conv_bn(h, filters, 1, stride, f"{name}/proj")
    return dg.relu(y + shortcut)


def build(widths: list[int], blocks: int, seed: int):
    """stem (conv 3x3, bn, relu, max pool 3x3/2: 28 -> 14), one stage per width (the first keeps
    the size, the others halve it with a strided block: 14 -> 7 -> 4), global average pool, dense.
    Returns (graph, logits, loss)."""
    g = dg.Graph(seed=seed)
    x = g.input("x", (None, 1, 28, 28))
    y = g.input("y", (None,), dtype="int32")
    h = dg.relu(conv_bn(x, widths[0], 3, 1, "stem"))
    h = dg.max_pool2d(h, 3, stride=2, padding=1)
    for stage, filters in enumerate(widths, start=1):
        for index in range(blocks):
            stride = 2 if stage > 1 and index == 0 else 1
            h = residual_block(h, filters, stride, f"stage{stage}/block{index + 1}")
    logits = dg.layers.Dense(10, name="head")(dg.global_pool(h, "avg"))
    return g, logits, dg.softmax_cross_entropy(logits, y)


def optimizer(args, total_steps: int):
    """AdamW on a cosine schedule with gradient clipping; no decay on biases and batch-norm scales."""
    schedule = dg.schedules.cosine_decay(args.lr, max(total_steps, 1))
    return dg.AdamW(schedule, weight_decay=args.weight_decay, clip_norm=args.clip, groups=[dg.no_decay()])


def train_drug(args, data) -> dict:
    """Train with drug; returns the initial parameters and state (for the twin) and the measurements."""
    x_train, y_train, x_test, y_test = data
    g, logits, loss = build(args.widths, args.blocks, args.seed)
    initial = {name: np.array(value) for name, value in list(g.params.items()) + list(g.state.items())}
    total_steps = args.epochs * batch_count(len(x_train), args.batch)
    train = g.compile(loss=loss, optimizer=optimizer(args, total_steps), backend=args.backend)
    predict = g.compile(outputs=logits, backend=args.backend)  # inference: batch norm's running statistics
    rng, augment = np.random.default_rng(args.seed), np.random.default_rng(args.seed + 1)
    done = 0
    if args.resume:  # parameters, statistics, AdamW's moments and the schedule's step counter
        train.load(args.resume)
        done = train.step_count // batch_count(len(x_train), args.batch)
        for _ in range(done):  # the minibatch order and the shifts of the epochs already trained
            for idx in minibatches(len(x_train), args.batch, rng):
                shifted(x_train[idx], augment, args.shift)
        print(f"resumed after epoch {done} (step {train.step_count})")
    last = min(args.epochs, args.stop_after or args.epochs)
    step, clock, curve = train.step_count, Clock(), {"train loss": ([], []), "test accuracy": ([], [])}
    for epoch in range(done + 1, last + 1):
        losses = []
        batches, total = minibatches(len(x_train), args.batch, rng), batch_count(len(x_train), args.batch)
        bar = tqdm(batches, total=total, desc=f"epoch {epoch}", unit="batch", leave=False)
        with clock.epoch():
            for idx in bar:
                step += 1
                losses.append(train(x=shifted(x_train[idx], augment, args.shift), y=y_train[idx]))
                track_loss(bar, curve["train loss"], step, losses)
        end_of_epoch(epoch, losses, clock.last, step, curve["test accuracy"], predict, x_test, y_test)
    acc = finish(args, train, curve, "MNIST ResNet", predict, x_test, y_test)
    return {"initial": initial, "accuracy": acc, "seconds": clock.seconds, "cpu": clock.cpu, "epochs": last - done,
            "backend": train.device}  # fmt: skip


def main() -> None:
    parser = example_parser(__doc__, epochs=8, batch=128, lr=3e-3)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64], help="filters per stage")
    parser.add_argument("--blocks", type=int, default=1, help="residual blocks per stage")
    parser.add_argument("--weight-decay", type=float, default=0.05, help="AdamW's decoupled weight decay")
    parser.add_argument("--clip", type=float, default=2.0, help="global gradient norm limit")
    parser.add_argument("--shift", type=int, default=2, help="random translations of up to this many pixels")
    parser.add_argument("--stop-after", type=int, metavar="EPOCH", help="stop after this epoch (the schedule still "
                        "spans --epochs; with --save, a checkpoint to --resume from)")  # fmt: skip
    parser.add_argument("--torch", action="store_true", help="then train the same network with PyTorch")
    args = parser.parse_args()
    run_with_twin(args, train_drug, "mnist_resnet_torch", "resume", "stop_after")


if __name__ == "__main__":
    main()
