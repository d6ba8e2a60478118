"""NumPy eager: forward and backward written by hand, Adam updating preallocated buffers in place."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..workloads import CNN, GRU, MLP, Data, Fusion, Workload
from .base import Peer, Unsupported


def available() -> str | None:
    return None


class Adam:
    """PyTorch's Adam (bias correction 1 - beta**t, epsilon outside the square root)."""

    def __init__(self, params: dict[str, np.ndarray], lr: float, b1=0.9, b2=0.999, eps=1e-8):
        self.params, self.lr, self.b1, self.b2, self.eps = params, lr, b1, b2, eps
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.tmp = {k: np.empty_like(v) for k, v in params.items()}
        self.t = 0

    def update(self, grads: dict[str, np.ndarray]) -> None:
        self.t += 1
        b1, b2 = self.b1, self.b2
        step = self.lr / (1 - b1**self.t)
        root_correction = np.float32(np.sqrt(1 - b2**self.t))
        for k, w in self.params.items():
            g, m, v, tmp = grads[k], self.m[k], self.v[k], self.tmp[k]
            m *= b1
            m += (1 - b1) * g
            v *= b2
            np.multiply(g, g, out=tmp)
            tmp *= 1 - b2
            v += tmp
            np.sqrt(v, out=tmp)
            tmp /= root_correction
            tmp += self.eps
            np.divide(m, tmp, out=tmp)
            tmp *= step
            w -= tmp


def softmax_ce(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy over rows and its gradient w.r.t. the logits (rows: all leading axes)."""
    flat = logits.reshape(-1, logits.shape[-1])
    rows = np.arange(flat.shape[0])
    z = flat - flat.max(axis=1, keepdims=True)
    e = np.exp(z)
    total = e.sum(axis=1, keepdims=True)
    loss = float(np.mean(np.log(total[:, 0]) - z[rows, labels.reshape(-1)]))
    e /= total
    e[rows, labels.reshape(-1)] -= 1
    e /= flat.shape[0]
    return loss, e.reshape(logits.shape)


class NumpyPeer(Peer):
    name = "numpy"

    def __init__(self, workload: Workload, data: Data):
        super().__init__(workload, data)
        self.p = {k: v.copy() for k, v in data.params.items()}
        self.adam = Adam(self.p, workload.lr) if workload.trains else None

    def run(self, batch):
        loss, grads = self.loss_and_grads(**batch)
        self.adam.update(grads)
        return loss


class MLPPeer(NumpyPeer):
    def loss_and_grads(self, x, y):
        p, n = self.p, len(self.workload.sizes) - 1
        acts = [x]
        for i in range(1, n + 1):
            h = acts[-1] @ p[f"w{i}"]
            h += p[f"b{i}"]
            if i < n:
                np.maximum(h, 0, out=h)
            acts.append(h)
        loss, d = softmax_ce(acts[-1], y)
        grads = {}
        for i in range(n, 0, -1):
            grads[f"w{i}"] = acts[i - 1].T @ d
            grads[f"b{i}"] = d.sum(axis=0)
            if i > 1:
                d = d @ p[f"w{i}"].T
                d *= acts[i - 1] > 0
        return loss, grads


def im2col(x: np.ndarray, k: int) -> np.ndarray:
    """NHWC -> (N*H*W, C*k*k) patches of the zero-padded ('same') input."""
    pad = k // 2
    xp = np.pad(x, ((0, 0), (pad, k - 1 - pad), (pad, k - 1 - pad), (0, 0)))
    windows = sliding_window_view(xp, (k, k), axis=(1, 2))  # N, H, W, C, k, k
    n, h, w = x.shape[:3]
    return windows.reshape(n * h * w, -1)


def col2im(cols: np.ndarray, shape: tuple[int, ...], k: int) -> np.ndarray:
    """Adjoint of im2col: add each patch back where it came from."""
    n, h, w, c = shape
    pad = k // 2
    cols = cols.reshape(n, h, w, c, k, k)
    out = np.zeros((n, h + k - 1, w + k - 1, c), cols.dtype)
    for i in range(k):
        for j in range(k):
            out[:, i : i + h, j : j + w, :] += cols[..., i, j]
    return out[:, pad : pad + h, pad : pad + w, :]


class CNNPeer(NumpyPeer):
    """Works in NHWC so that im2col patches are rows and convolutions are single GEMMs."""

    def convert(self, batch):
        return {"x": np.ascontiguousarray(batch["x"].transpose(0, 2, 3, 1)), "y": batch["y"]}

    def _conv(self, x, name):
        weight = self.p[name]
        cols = im2col(x, weight.shape[-1])
        out = cols @ weight.reshape(weight.shape[0], -1).T
        out += self.p["cb" + name[1:]]
        np.maximum(out, 0, out=out)
        return cols, out.reshape(x.shape[:3] + (weight.shape[0],))

    def _conv_grads(self, d, cols, act, name, grads):
        weight = self.p[name]
        d = (d * (act > 0)).reshape(-1, weight.shape[0])
        grads[name] = (d.T @ cols).reshape(weight.shape)
        grads["cb" + name[1:]] = d.sum(axis=0)
        return d @ weight.reshape(weight.shape[0], -1)  # patch gradients

    def loss_and_grads(self, x, y):
        p = self.p
        cols1, h1 = self._conv(x, "c1")
        cols2, h2 = self._conv(h1, "c2")
        pooled = h2.mean(axis=(1, 2))
        loss, d = softmax_ce(pooled @ p["w"] + p["b"], y)
        grads = {"w": pooled.T @ d, "b": d.sum(axis=0)}
        hw = h2.shape[1] * h2.shape[2]
        d2 = np.broadcast_to((d @ p["w"].T / hw)[:, None, None, :], h2.shape)
        dcols2 = self._conv_grads(d2, cols2, h2, "c2", grads)
        d1 = col2im(dcols2, h1.shape, p["c2"].shape[-1])
        self._conv_grads(d1, cols1, h1, "c1", grads)  # no input gradient needed
        return loss, grads


def sigmoid(x):
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


class GRUPeer(NumpyPeer):
    def loss_and_grads(self, ids, targets):
        p, H = self.p, self.workload.hidden
        B, T = ids.shape
        emb = p["emb"][ids]  # B, T, E
        xproj = emb @ p["w_x"] + p["b_x"]  # B, T, 3H
        h = np.zeros((B, H), np.float32)
        hs, cache = np.empty((B, T, H), np.float32), []
        for t in range(T):
            gh = h @ p["w_h"] + p["b_h"]
            gx = xproj[:, t]
            r = sigmoid(gx[:, :H] + gh[:, :H])
            z = sigmoid(gx[:, H : 2 * H] + gh[:, H : 2 * H])
            n = np.tanh(gx[:, 2 * H :] + r * gh[:, 2 * H :])
            cache.append((h, gh, r, z, n))
            h = (1 - z) * n + z * h
            hs[:, t] = h
        loss, dlogits = softmax_ce(hs @ p["w_out"] + p["b_out"], targets)
        V = p["w_out"].shape[1]
        grads = {
            "w_out": hs.reshape(-1, H).T @ dlogits.reshape(-1, V),
            "b_out": dlogits.reshape(-1, V).sum(axis=0),
        }
        dhs = dlogits @ p["w_out"].T  # B, T, H
        dxproj = np.empty_like(xproj)
        dwh, dbh = np.zeros_like(p["w_h"]), np.zeros_like(p["b_h"])
        dh = np.zeros((B, H), np.float32)
        for t in range(T - 1, -1, -1):
            h_prev, gh, r, z, n = cache[t]
            dh = dh + dhs[:, t]
            dn = dh * (1 - z)
            dz = dh * (h_prev - n)
            dan = dn * (1 - n * n)
            dar = dan * gh[:, 2 * H :] * r * (1 - r)
            daz = dz * z * (1 - z)
            dxproj[:, t, :H], dxproj[:, t, H : 2 * H], dxproj[:, t, 2 * H :] = dar, daz, dan
            dgh = np.concatenate([dar, daz, dan * r], axis=1)
            dwh += h_prev.T @ dgh
            dbh += dgh.sum(axis=0)
            dh = dh * z + dgh @ p["w_h"].T
        flat = dxproj.reshape(B * T, -1)
        grads.update(w_h=dwh, b_h=dbh, w_x=emb.reshape(B * T, -1).T @ flat, b_x=flat.sum(axis=0))
        demb = np.zeros_like(p["emb"])
        np.add.at(demb, ids.reshape(-1), flat @ p["w_x"].T)
        grads["emb"] = demb
        return loss, grads


class FusionPeer(NumpyPeer):
    """Five in-place passes over one preallocated output: NumPy's best without a fuser."""

    def __init__(self, workload: Workload, data: Data):
        super().__init__(workload, data)
        self.out = np.empty(workload.n, np.float32)

    def run(self, batch):
        out = self.out
        np.multiply(batch["a"], batch["b"], out=out)
        out += batch["c"]
        np.maximum(out, 0, out=out)
        out *= batch["d"]
        out -= batch["e"]
        return out


CLASSES = {MLP: MLPPeer, CNN: CNNPeer, GRU: GRUPeer, Fusion: FusionPeer}


def build(workload: Workload, data: Data) -> Peer:
    cls = CLASSES.get(type(workload))
    if cls is None:
        raise Unsupported(workload.name)
    return cls(workload, data)
