"""Each framework in a worker process of its own, timed in interleaved rounds by the parent.

Frameworks that share a process share its cores through their own thread pools (OpenBLAS,
two OpenMP runtimes, XLA's Eigen pool), which then fight: measured here, drug's MLP step went
from 2.8 ms to 8.3 ms just because PyTorch had been imported into the process, and PyTorch's own
step slowed several times over when JAX ran beside it. Users run one framework per process,
so that is what the benchmark measures by default; `--same-process` keeps the old behaviour."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

from .peers import Unsupported


def _serve(conn, workload: str, size: str, seed: int, peer: str, backend: str, threads_n: int | None) -> None:
    from . import threads

    threads.configure(threads_n)  # before the framework loads
    from . import timing
    from .peers import factory
    from .workloads import suite

    try:
        w = suite(size)[workload]
        built = factory(peer, backend=backend)(w, w.make_data(seed))
        conn.send(("ok", getattr(built, "backend", None)))
    except Unsupported:
        conn.send(("unsupported", None))
        return
    except Exception as error:  # reported by the parent, which goes on with the other peers
        conn.send(("error", f"{type(error).__name__}: {error}"))
        return
    while True:
        command, argument = conn.recv()
        try:
            if command == "check":
                conn.send(("ok", built.check_values(argument)))
            elif command == "time":
                conn.send(("ok", timing._timed(built.step, argument)))
            else:
                return
        except Exception as error:
            conn.send(("error", f"{type(error).__name__}: {error}"))


class RemotePeer:
    """A peer living in its own process; `timed(calls)` runs `calls` steps there."""

    def __init__(self, name: str, workload: str, size: str, seed: int, backend: str, threads_n: int | None):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_serve, args=(child, workload, size, seed, name, backend, threads_n), daemon=True
        )
        self.process.start()
        status, value = self.conn.recv()
        if status == "unsupported":
            self.close()
            raise Unsupported(workload)
        if status == "error":
            self.close()
            raise RuntimeError(value)
        self.backend = value

    def _ask(self, command: str, argument: Any) -> Any:
        self.conn.send((command, argument))
        status, value = self.conn.recv()
        if status != "ok":
            raise RuntimeError(value)
        return value

    def check_values(self, n: int) -> list[float]:
        return self._ask("check", n)

    def timed(self, calls: int) -> float:
        return self._ask("time", calls)

    def close(self) -> None:
        try:
            self.conn.send(("stop", None))
        except (OSError, BrokenPipeError):
            pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()


def factory(name: str, size: str, seed: int, backend: str, threads_n: int | None):
    """Like `peers.factory`, but each built peer runs in a worker process."""
    return lambda workload, data: RemotePeer(name, workload.name, size, seed, backend, threads_n)
