"""PyTorch CPU, eager and `torch.compile`: the same model code, fused Adam for the update."""

from __future__ import annotations

from .. import threads
from ..workloads import CNN, GRU, MLP, Data, Fusion, ResNet, Transformer, Workload
from .base import Peer, Unsupported


def available() -> str | None:
    try:
        import torch  # noqa: F401
    except ImportError as error:
        return f"PyTorch not installed ({error}); install the 'bench' extra"
    return None


def _mlp(n_layers: int):
    import torch

    def loss_fn(p, x, y):
        h = x
        for i in range(1, n_layers + 1):
            h = torch.addmm(p[f"b{i}"], h, p[f"w{i}"])
            if i < n_layers:
                h = torch.relu(h)
        return torch.nn.functional.cross_entropy(h, y)

    return loss_fn


def _cnn(p, x, y):
    import torch.nn.functional as F

    h = F.relu(F.conv2d(x, p["c1"], p["cb1"], padding="same"))
    h = F.relu(F.conv2d(h, p["c2"], p["cb2"], padding="same"))
    return F.cross_entropy(h.mean(dim=(2, 3)) @ p["w"] + p["b"], y)


def _resnet(workload: ResNet, stats: dict):
    """The ResNet with functional batch norm; `stats` holds the running statistics it updates."""
    import torch
    import torch.nn.functional as F

    def conv_bn(p, h, name, stride):
        w = p[f"{name}/w"]
        h = F.conv2d(h, w, stride=stride, padding=w.shape[-1] // 2)
        mean, var = stats[name]
        return F.batch_norm(h, mean, var, p[f"{name}/scale"], p[f"{name}/bias"], training=True, momentum=0.1)

    def loss_fn(p, x, y):
        h = F.max_pool2d(F.relu(conv_bn(p, x, "stem", 1)), 3, stride=2, padding=1)
        for block in workload.blocks():
            out = conv_bn(p, F.relu(conv_bn(p, h, f"{block.name}/a", block.stride)), f"{block.name}/b", 1)
            h = F.relu(out + (conv_bn(p, h, f"{block.name}/proj", block.stride) if block.projection else h))
        return F.cross_entropy(torch.addmm(p["head/b"], h.mean(dim=(2, 3)), p["head/w"]), y)

    return loss_fn


def _transformer(w: Transformer):
    import torch.nn.functional as F

    d, heads = w.dim, w.heads

    def norm(x, p, name):
        return F.layer_norm(x, (d,), p[f"{name}_scale"], p[f"{name}_bias"])

    def loss_fn(p, ids, targets):
        batch, seq = ids.shape

        def split(h, role):  # (batch, heads, T, dh), the layout scaled_dot_product_attention takes
            return (h @ p[f"w_{role}"] + p[f"b_{role}"]).view(batch, seq, heads, d // heads).transpose(1, 2)

        x = F.embedding(ids, p["emb"]) + p["pos"]
        h = norm(x, p, "ln1")
        a = F.scaled_dot_product_attention(split(h, "q"), split(h, "k"), split(h, "v"), is_causal=True)
        x = x + a.transpose(1, 2).reshape(batch, seq, d) @ p["w_o"] + p["b_o"]
        x = x + F.gelu(norm(x, p, "ln2") @ p["w_1"] + p["b_1"]) @ p["w_2"] + p["b_2"]
        logits = norm(x, p, "lnf") @ p["w_out"] + p["b_out"]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    return loss_fn


class TorchPeer(Peer):
    def __init__(self, workload: Workload, data: Data, compiled: bool = False):
        import torch

        threads.apply_to_torch(torch)
        self.torch = torch
        self.name = "torch.compile" if compiled else "torch"
        self.compiles = compiled
        super().__init__(workload, data)
        self.p = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in data.params.items()}
        params = list(self.p.values())
        if isinstance(workload, MLP):
            fn = _mlp(len(workload.sizes) - 1)
        elif isinstance(workload, CNN):
            fn = _cnn
        elif isinstance(workload, ResNet):
            self.stats = {name: (torch.zeros(cout), torch.ones(cout)) for name, _, cout, _, _ in workload.convs()}
            fn = _resnet(workload, self.stats)
        elif isinstance(workload, GRU):
            fn, params = self._gru(workload)
        elif isinstance(workload, Transformer):
            fn = _transformer(workload)
        elif isinstance(workload, Fusion):
            fn = lambda a, b, c, d, e: torch.relu(a * b + c) * d - e
        else:
            raise Unsupported(workload.name)
        self.fn = torch.compile(fn, dynamic=False) if compiled else fn
        if workload.trains:
            self.opt = torch.optim.Adam(params, lr=workload.lr, fused=True)

    def _gru(self, w: GRU):
        """nn.GRU (PyTorch's fused CPU kernel) holding the shared weights, transposed to its layout."""
        torch = self.torch
        gru = torch.nn.GRU(w.embed, w.hidden, batch_first=True)
        with torch.no_grad():
            gru.weight_ih_l0.copy_(self.p.pop("w_x").T)
            gru.weight_hh_l0.copy_(self.p.pop("w_h").T)
            gru.bias_ih_l0.copy_(self.p.pop("b_x"))
            gru.bias_hh_l0.copy_(self.p.pop("b_h"))
        self.gru = gru
        F = torch.nn.functional

        def loss_fn(p, ids, targets):
            out, _ = gru(F.embedding(ids, p["emb"]))
            logits = out @ p["w_out"] + p["b_out"]
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

        return loss_fn, list(self.p.values()) + list(gru.parameters())

    def convert(self, batch):
        torch = self.torch
        out = {}
        for k, v in batch.items():
            t = torch.from_numpy(v)  # shares the shared batch's memory; nothing writes to it
            out[k] = t.long() if k in ("y", "targets") or isinstance(self.workload, Transformer) else t  # int64 indices
        return out

    def run(self, batch):
        if not self.workload.trains:
            return self.fn(**batch)
        self.opt.zero_grad(set_to_none=True)
        loss = self.fn(self.p, **batch)
        loss.backward()
        self.opt.step()
        return loss.item()

    def to_numpy(self, out):
        return out.detach().numpy()


def build(workload: Workload, data: Data, compiled: bool = False) -> Peer:
    return TorchPeer(workload, data, compiled)
