"""JAX: the whole train step (loss, `value_and_grad`, Adam) under one `jax.jit`.

Import this module only after the thread settings are in place: XLA reads its flags when
jax is first imported."""

from __future__ import annotations

from ..workloads import CNN, GRU, MLP, Data, Fusion, Transformer, Workload
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


def _train_step(loss_fn, lr: float, b1=0.9, b2=0.999, eps=1e-8):
    import jax
    import jax.numpy as jnp

    def step(p, m, v, t, batch):
        loss, g = jax.value_and_grad(loss_fn)(p, **batch)
        t = t + 1
        step_size = lr / (1 - b1**t)
        root_correction = jnp.sqrt(1 - b2**t)
        m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
        v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, v, g)
        p = jax.tree.map(lambda p, m, v: p - step_size * m / (jnp.sqrt(v) / root_correction + eps), p, m, v)
        return p, m, v, t, loss

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
        self.fn = _train_step(_loss_fn(workload), workload.lr)
        p = {k: jnp.asarray(v) for k, v in data.params.items()}
        zeros = lambda: {k: jnp.zeros_like(v) for k, v in p.items()}
        self.state = (p, zeros(), zeros(), jnp.zeros((), jnp.float32))

    def convert(self, batch):
        return {k: self.jax.device_put(v) for k, v in batch.items()}

    def run(self, batch):
        if not self.workload.trains:
            return self.fn(**batch)
        *state, loss = self.fn(*self.state, batch)
        self.state = tuple(state)
        return float(loss)

    def sync(self, out):
        out.block_until_ready()


def build(workload: Workload, data: Data) -> Peer:
    return JaxPeer(workload, data)
