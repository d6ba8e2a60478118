"""Train a generative adversarial network on MNIST: generator and discriminator live in one graph,
the discriminator is applied to real and to generated images with the same layers (shared
parameters), and each side has its own Adam over its own parameters. Writes a grid of samples."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import batch_count, example_parser, minibatches, plot_curves
from tqdm import tqdm

import drug as dg
from drug.datasets import mnist


@dg.elementwise
def leaky_relu(x):
    """A gradient everywhere: a dead relu in the discriminator would starve the generator of gradient."""
    return x if x > 0 else 0.2 * x


@dg.elementwise
def softplus(x):
    """log(1 + exp(x)) where exp only sees -|x|: it never overflows, and large logits keep exact
    losses and gradients."""
    return max(x, 0.0) + math.log(1.0 + math.exp(-abs(x)))


@dataclass
class GAN:
    graph: dg.Graph
    fake: dg.Node  # generated images (batch, 784) in [-1, 1], like the real ones fed to x
    d_loss: dg.Node  # binary cross-entropy of D on real (label 1) and generated (label 0) images
    g_loss: dg.Node  # non-saturating generator loss: -log D(G(z))
    d_real: dg.Node  # mean D probability of real images
    d_fake: dg.Node  # mean D probability of generated images
    gen_params: list[dg.Node]
    disc_params: list[dg.Node]


def build(noise: int, g_hidden: list[int], d_hidden: list[int], seed: int) -> GAN:
    g = dg.Graph(seed=seed)
    x = g.input("x", (None, 784))
    z = g.input("z", (None, noise))

    # leaky hidden units and a tanh output on data scaled to [-1, 1]: with relu units and a sigmoid
    # output the discriminator won within an epoch (D(fake) ~ 0.01) and every sample was the same blob
    gen = [dg.layers.Dense(n, activation=leaky_relu, name=f"gen{i}") for i, n in enumerate(g_hidden, 1)]
    gen.append(dg.layers.Dense(784, activation="tanh", name="gen_out"))
    disc = [dg.layers.Dense(n, activation=leaky_relu, name=f"disc{i}") for i, n in enumerate(d_hidden, 1)]
    disc.append(dg.layers.Dense(1, name="disc_out"))

    def apply(layers, h):
        for layer in layers:
            h = layer(h)
        return h

    fake = apply(gen, z)
    real_logit, fake_logit = apply(disc, x), apply(disc, fake)  # the same layer objects: shared weights
    d_loss = dg.mean(softplus(-real_logit)) + dg.mean(softplus(fake_logit))
    g_loss = dg.mean(softplus(-fake_logit))
    return GAN(
        graph=g,
        fake=fake,
        d_loss=d_loss,
        g_loss=g_loss,
        d_real=dg.mean(dg.sigmoid(real_logit)),
        d_fake=dg.mean(dg.sigmoid(fake_logit)),
        gen_params=[p for layer in gen for p in layer.parameters],
        disc_params=[p for layer in disc for p in layer.parameters],
    )


def compile_steps(gan: GAN, lr: float, backend: str):
    """One train step per side, each updating only its own parameters (beta1 = 0.5, as DCGAN)."""
    g, d_adam, g_adam = gan.graph, dg.Adam(lr, beta_momentum=0.5), dg.Adam(lr, beta_momentum=0.5)
    outputs = [gan.d_real, gan.d_fake]
    d_step = g.compile(loss=gan.d_loss, outputs=outputs, optimizer=d_adam, params=gan.disc_params, backend=backend)
    g_step = g.compile(loss=gan.g_loss, optimizer=g_adam, params=gan.gen_params, backend=backend)
    return d_step, g_step


def image_grid(images: np.ndarray, n: int, pad: int = 2) -> np.ndarray:
    """n x n 28x28 images tiled with `pad` pixels of background between and around them."""
    side = n * (28 + pad) + pad
    grid = np.zeros((side, side), np.float32)
    for k, image in enumerate(images[: n * n].reshape(-1, 28, 28)):
        r, c = divmod(k, n)
        top, left = pad + r * (28 + pad), pad + c * (28 + pad)
        grid[top : top + 28, left : left + 28] = image
    return grid


def save_grid(path: str, grid: np.ndarray) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise SystemExit(f"writing the sample grid needs matplotlib ({error}); `pip install matplotlib`") from None
    plt.imsave(path, grid, cmap="gray", vmin=0.0, vmax=1.0)


def checkpoint_paths(path: str) -> tuple[str, str]:
    """One checkpoint per side (each holds its own optimizer state): <stem>-disc.npz, <stem>-gen.npz."""
    stem = str(Path(path).with_suffix("")) if path.endswith(".npz") else path
    return f"{stem}-disc.npz", f"{stem}-gen.npz"


def train_epoch(d_step, g_step, x_train: np.ndarray, args, rng: np.random.Generator, curve: dict, step: int) -> dict:
    """One pass over the data: per batch a discriminator step on real and fresh generated images,
    then a generator step on new noise. Returns the epoch's mean statistics and the step count."""
    stats: dict[str, list[float]] = {"D loss": [], "G loss": [], "D(real)": [], "D(fake)": []}
    batches = minibatches(len(x_train), args.batch, rng)
    bar = tqdm(batches, total=batch_count(len(x_train), args.batch), desc="batches", unit="batch", leave=False)
    for idx in bar:
        z = rng.standard_normal((len(idx), args.noise)).astype(np.float32)
        d_loss, real_p, fake_p = d_step(x=x_train[idx], z=z)
        g_loss = g_step(z=rng.standard_normal((len(idx), args.noise)).astype(np.float32))
        if step == 0:
            print(f"first step: D loss {d_loss:.4f}, G loss {g_loss:.4f}")
        step += 1
        for name, value in zip(stats, (d_loss, g_loss, real_p, fake_p)):
            stats[name].append(float(value))
        if step % 50 == 0:
            bar.set_postfix(d=f"{np.mean(stats['D loss'][-50:]):.3f}", g=f"{np.mean(stats['G loss'][-50:]):.3f}")
            for name in curve:
                curve[name][0].append(step)
                curve[name][1].append(float(np.mean(stats[name][-50:])))
    return {name: float(np.mean(values)) for name, values in stats.items()} | {"step": step}


def main() -> None:
    parser = example_parser(__doc__, epochs=10, batch=64, lr=2e-4)
    parser.add_argument("--noise", type=int, default=64, help="size of the generator's noise input")
    parser.add_argument("--g-hidden", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--d-hidden", type=int, nargs="+", default=[512, 256])
    parser.add_argument("--grid", type=int, default=8, help="the sample grid is grid x grid images")
    parser.add_argument("--out", default="gan_samples.png", help="PNG of generated digits")
    args = parser.parse_args()

    x_train, _ = mnist("train")
    x_train = x_train * 2.0 - 1.0  # the generator's tanh range
    if args.smoke:
        x_train = x_train[:1024]
    gan = build(args.noise, args.g_hidden, args.d_hidden, args.seed)
    d_step, g_step = compile_steps(gan, args.lr, args.backend)
    sample = gan.graph.compile(outputs=gan.fake, backend=args.backend)
    if args.resume:
        for step_fn, path in zip((d_step, g_step), checkpoint_paths(args.resume)):
            step_fn.load(path)
    rng = np.random.default_rng(args.seed)
    fixed_z = rng.standard_normal((args.grid**2, args.noise)).astype(np.float32)  # the grid's noise
    curve = {"D loss": ([], []), "G loss": ([], [])}
    step, seconds = 0, 0.0
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        means = train_epoch(d_step, g_step, x_train, args, rng, curve, step)
        step, elapsed = means["step"], time.perf_counter() - start
        seconds += elapsed
        print(
            f"epoch {epoch}: D loss {means['D loss']:.4f}, G loss {means['G loss']:.4f}, "
            f"D(real) {means['D(real)']:.3f}, D(fake) {means['D(fake)']:.3f}, {elapsed:.1f} s"
        )
    save_grid(args.out, image_grid((sample(z=fixed_z) + 1.0) / 2.0, args.grid))
    if args.save:
        for step_fn, path in zip((d_step, g_step), checkpoint_paths(args.save)):
            step_fn.save(path)
    if args.plot:
        plot_curves(args.plot, curve, "step", "MNIST GAN")
    per_epoch = f"{seconds / args.epochs:.1f} s/epoch" if args.epochs else "no training"
    print(
        f"summary: {args.epochs} epoch(s), {step} steps per side, {seconds:.1f} s ({per_epoch}), "
        f"backend {d_step.backend}, samples: {args.out} ({args.grid}x{args.grid})"
    )


if __name__ == "__main__":
    main()
