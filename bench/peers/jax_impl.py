"""JAX: the whole train step (loss, `value_and_grad`, Adam) under one `jax.jit`.

Import this module only after the thread settings are in place: XLA reads its flags when
jax is first imported."""

from __future__ import annotations

from ..workloads import CNN, GRU, MLP, Data, Fusion, ResNet, Transformer, Workload
from .base import Peer, Unsupported


def available() -> str | None:
    try:
        import jax  # noqa: F401
    except ImportError as error:
        return f"JAX not installed ({error}); install the 'bench' extra"
    return None


def _cross_entropy(jnp, logits, labels):
    logits = logits.reshape(-1, logits.shape[-1])
    z = logits - logits.max(axis=1, keepdims=True)
    picked = jnp.take_along_axis(z, labels.reshape(-1, 1), axis=1)[:, 0]
    return jnp.mean(jnp.log(jnp.exp(z).sum(axis=1)) - picked)


def _loss_fn(workload: Workload):
    import jax
    import jax.numpy as jnp

    if isinstance(workload, MLP):
        n = len(workload.sizes) - 1

        def mlp(p, x, y):
            h = x
            for i in range(1, n + 1):
                h = h @ p[f"w{i}"] + p[f"b{i}"]
                if i < n:
                    h = jax.nn.relu(h)
            return _cross_entropy(jnp, h, y)

        return mlp
    if isinstance(workload, CNN):
        pad = workload.kernel // 2

        def conv(x, w, b):
            layout = ("NCHW", "OIHW", "NCHW")
            out = jax.lax.conv_general_dilated(x, w, (1, 1), [(pad, pad)] * 2, dimension_numbers=layout)
            return jax.nn.relu(out + b[None, :, None, None])

        def cnn(p, x, y):
            h = conv(conv(x, p["c1"], p["cb1"]), p["c2"], p["cb2"])
            return _cross_entropy(jnp, h.mean(axis=(2, 3)) @ p["w"] + p["b"], y)

        return cnn
    if isinstance(workload, GRU):
        H = workload.hidden

        def gru(p, ids, targets):
            xproj = p["emb"][ids] @ p["w_x"] + p["b_x"]  # B, T, 3H

            def cell(h, gx):
                gh = h @ p["w_h"] + p["b_h"]
                r = jax.nn.sigmoid(gx[:, :H] + gh[:, :H])
                z = jax.nn.sigmoid(gx[:, H : 2 * H] + gh[:, H : 2 * H])
                n = jnp.tanh(gx[:, 2 * H :] + r * gh[:, 2 * H :])
                h = (1 - z) * n + z * h
                return h, h

            h0 = jnp.zeros((ids.shape[0], H), xproj.dtype)
            _, hs = jax.lax.scan(cell, h0, jnp.swapaxes(xproj, 0, 1))  # T, B, H
            return _cross_entropy(jnp, jnp.swapaxes(hs, 0, 1) @ p["w_out"] + p["b_out"], targets)

        return gru
    if isinstance(workload, Transformer):
        return _transformer(workload)
    raise Unsupported(workload.name)


def _resnet_loss(workload: ResNet):
    """The ResNet as loss(p, stats, x, y) -> (loss, new running statistics): batch norm with batch
    statistics, running ones updated as PyTorch does (momentum 0.1, unbiased variance)."""
    import jax
    import jax.numpy as jnp

    layout = ("NCHW", "OIHW", "NCHW")

    def conv_bn(p, stats, new, h, name, stride):
        w = p[f"{name}/w"]
        pad = w.shape[-1] // 2
        h = jax.lax.conv_general_dilated(h, w, (stride, stride), [(pad, pad)] * 2, dimension_numbers=layout)
        mean, var = h.mean(axis=(0, 2, 3)), h.var(axis=(0, 2, 3))
        count = h.size / h.shape[1]
        running_mean, running_var = stats[name]
        new[name] = (0.9 * running_mean + 0.1 * mean, 0.9 * running_var + 0.1 * var * count / (count - 1))
        scale = p[f"{name}/scale"] / jnp.sqrt(var + 1e-5)
        return (h - mean[None, :, None, None]) * scale[None, :, None, None] + p[f"{name}/bias"][None, :, None, None]

    def loss(p, stats, x, y):
        new = {}
        h = jax.nn.relu(conv_bn(p, stats, new, x, "stem", 1))
        h = jax.lax.reduce_window(
            h, -jnp.inf, jax.lax.max, (1, 1, 3, 3), (1, 1, 2, 2), [(0, 0), (0, 0), (1, 1), (1, 1)]
        )
        for block in workload.blocks():
            out = jax.nn.relu(conv_bn(p, stats, new, h, f"{block.name}/a", block.stride))
            out = conv_bn(p, stats, new, out, f"{block.name}/b", 1)
            shortcut = conv_bn(p, stats, new, h, f"{block.name}/proj", block.stride) if block.projection else h
            h = jax.nn.relu(out + shortcut)
        return _cross_entropy(jnp, h.mean(axis=(2, 3)) @ p["head/w"] + p["head/b"], y), new

    return loss


def _transformer(w: Transformer):
    import jax
    import jax.numpy as jnp

    d, heads = w.dim, w.heads

    def norm(x, p, name, eps=1e-5):
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + eps) * p[f"{name}_scale"] + p[f"{name}_bias"]

    def transformer(p, ids, targets):
        batch, seq = ids.shape

        def split(h, role):  # (batch, T, heads, dh), the layout dot_product_attention takes
            return (h @ p[f"w_{role}"] + p[f"b_{role}"]).reshape(batch, seq, heads, d // heads)

        x = p["emb"][ids] + p["pos"]
        h = norm(x, p, "ln1")
        a = jax.nn.dot_product_attention(split(h, "q"), split(h, "k"), split(h, "v"), is_causal=True)
        x = x + a.reshape(batch, seq, d) @ p["w_o"] + p["b_o"]
        x = x + jax.nn.gelu(norm(x, p, "ln2") @ p["w_1"] + p["b_1"], approximate=False) @ p["w_2"] + p["b_2"]
        return _cross_entropy(jnp, norm(x, p, "lnf") @ p["w_out"] + p["b_out"], targets)

    return transformer


def _train_step(loss_fn, lr: float, b1=0.9, b2=0.999, eps=1e-8, has_aux: bool = False):
    import jax
    import jax.numpy as jnp

    def step(p, m, v, t, batch):
        if has_aux:  # the batch carries the running statistics in and takes the new ones out
            (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(p, batch["stats"], batch["x"], batch["y"])
        else:
            loss, g = jax.value_and_grad(loss_fn)(p, **batch)
            stats = None
        t = t + 1
        step_size = lr / (1 - b1**t)
        root_correction = jnp.sqrt(1 - b2**t)
        m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
        v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, v, g)
        p = jax.tree.map(lambda p, m, v: p - step_size * m / (jnp.sqrt(v) / root_correction + eps), p, m, v)
        return p, m, v, t, loss, stats

    return jax.jit(step, donate_argnums=(0, 1, 2))


class JaxPeer(Peer):
    name = "jax"
    compiles = True

    def __init__(self, workload: Workload, data: Data):
        import jax
        import jax.numpy as jnp

        self.jax = jax
        super().__init__(workload, data)
        if isinstance(workload, Fusion):
            self.fn = jax.jit(lambda a, b, c, d, e: jnp.maximum(a * b + c, 0) * d - e)
            return
        resnet = isinstance(workload, ResNet)
        loss_fn = _resnet_loss(workload) if resnet else _loss_fn(workload)
        self.fn = _train_step(loss_fn, workload.lr, has_aux=resnet)
        p = {k: jnp.asarray(v) for k, v in data.params.items()}
        zeros = lambda: {k: jnp.zeros_like(v) for k, v in p.items()}
        self.state = (p, zeros(), zeros(), jnp.zeros((), jnp.float32))
        self.stats = None
        if resnet:
            self.stats = {name: (jnp.zeros(c), jnp.ones(c)) for name, _, c, _, _ in workload.convs()}

    def convert(self, batch):
        return {k: self.jax.device_put(v) for k, v in batch.items()}

    def run(self, batch):
        if not self.workload.trains:
            return self.fn(**batch)
        if self.stats is not None:
            batch = {**batch, "stats": self.stats}
        *state, loss, stats = self.fn(*self.state, batch)
        self.state, self.stats = tuple(state), stats
        return float(loss)

    def sync(self, out):
        out.block_until_ready()


def build(workload: Workload, data: Data) -> Peer:
    return JaxPeer(workload, data)
