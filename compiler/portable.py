"""A finished program as bytes that another process can turn back into the same program for the
same request, so that a compile cache can skip the passes, not only LLVM.

A request (what `build_program` is asked: the user's nodes, loss, outputs, trained parameters,
optimizer, mode) has a text, `request_text`, that names everything the passes read; two
requests with the same text get the same program. `encode` stores what the passes made: the
nodes they created (op, inputs, type, the call they are attributed to), and the program and
its schedule referring to the user's nodes by their place in the request. `decode` makes those
nodes afresh in this process (new ids, in the same order) and links them to this request's own
nodes, graph and optimizer.

What a text cannot name safely is never stored: ops or optimizers defined outside drug (their
code is not in the cache key), values whose repr is an object address, nodes the passes read
that the request does not reach, and builds that changed the graph."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import re
from collections.abc import Iterable
from typing import Any

from ..core.graph import Graph
from ..core.leaves import ConstantOp
from ..core.node import Call, Node, recording, user_name
from ..core.program import Program, ancestors
from ..core.types import TensorType
from .schedule import Schedule, fingerprint

FORMAT = b"drug-program-4\n"
CONSTANT_VALUE = "constant value"  # a persistent id (CONSTANT_VALUE, i): the value of request node i
SCHEDULE_FIELDS = (
    "program", "kernels", "buffers", "buffer_of", "copies", "transposed", "workspaces", "groups", "digest",
)  # fmt: skip


NODE_ID = re.compile(r"#(\d+)")  # how a label names a node without a name (`<op>#<id>`)


class NotPortable(Exception):
    """The program (or request) holds something a stored copy could not reproduce."""


def request_nodes(request: Program) -> list[Node]:
    """The user's nodes the passes may read, in creation order: what the roots and the trained
    parameters reach, and the graph's random-number counter."""
    counter = request.graph.random_counter
    return ancestors(list(request.outputs) + list(request.wrt) + ([counter] if counter is not None else []))


def request_text(request: Program, config: str) -> str | None:
    """A digest of everything the passes read from `request` (`config`: the backend's own pass
    settings); None if something in it has no stable text (a user's op class, an object repr)."""
    nodes = request_nodes(request)
    local = {n.id: i for i, n in enumerate(nodes)}
    graph = request.graph
    h = hashlib.sha256(f"{FORMAT!r}|{config}|{graph.seed}|{graph.dtype.str}|{request.training}\n".encode())
    for node in nodes:
        if not _drug_class(node.op):
            return None
        inputs = [local[i.id] for i in node.inputs]
        # the name the compiler's calls take from it (gradient rules are named after it in profiles)
        origin = (_canonical(user_name(node), local), node.call.kind) if node.call is not None else None
        line = f"{node.op.key()!r}|{node.shape}|{node.dtype.str}|{inputs}|{node.name!r}|{origin!r}\n"
        if " at 0x" in line:
            return None
        h.update(line.encode())
    roles = [[local[n.id] for n in request.outputs], [local[n.id] for n in request.wrt]]
    roles.append(local[request.loss.id] if request.loss is not None else None)
    h.update(repr(roles).encode())
    optimizer = _optimizer_text(request.optimizer)
    if optimizer is None:
        return None
    h.update(optimizer.encode())
    return h.hexdigest()


def _canonical(label: str, local: dict[int, int]) -> str:
    """`label` with the ids of the request's nodes replaced by their places in it."""
    head, mark, number = label.rpartition("#")
    if not mark:
        return label
    if "#" not in head and number.isdecimal():  # `<op>#<id>`, most labels: no regex
        return f"{head}#@{local[int(number)]}" if int(number) in local else label
    return NODE_ID.sub(lambda m: f"#@{local[int(m[1])]}" if int(m[1]) in local else m[0], label)


def _drug_class(obj: Any) -> bool:
    return type(obj).__module__.startswith("drug.")


def _optimizer_text(optimizer: Any) -> str | None:
    if optimizer is None:
        return "no optimizer"
    if not _drug_class(optimizer) or not dataclasses.is_dataclass(optimizer):
        return None
    fields = [(f.name, getattr(optimizer, f.name)) for f in dataclasses.fields(optimizer)]
    text = f"{type(optimizer).__module__}.{type(optimizer).__qualname__}{fields!r}"
    return None if " at 0x" in text else text


def encode(request: Program, finished: Program, mark: int) -> bytes:
    """`finished` (what the passes made of `request`, starting after `core.node.id_mark()` gave
    `mark`) as bytes for `decode`; NotPortable if it cannot be stored. Sets the schedule's digest."""
    users = request_nodes(request)
    user_index = {n.id: i for i, n in enumerate(users)}
    made = _made_nodes(finished, user_index, mark)
    made_index = {n.id: i for i, n in enumerate(made)}
    user_calls = {id(n.call): i for i, n in reversed(list(enumerate(users))) if n.call is not None}

    def ref(node: Node | int) -> int:
        """A node as its place among the request's nodes, then the made ones (decode's `nodes`)."""
        nid = node if isinstance(node, int) else node.id
        if nid in user_index:
            return user_index[nid]
        return len(users) + made_index[nid]

    calls: dict[int, int] = {}
    call_records: list[tuple] = []
    records = []
    types: dict[TensorType, TensorType] = {}  # one object per type: stored once, and decoded nodes share it
    for node in made:
        if not _drug_class(node.op):
            raise NotPortable(f"node {node.label}")
        call = _call_ref(node.call, user_calls, calls, call_records, ref)
        type_ = types.setdefault(node.type, node.type)
        records.append((node.op, [ref(i) for i in node.inputs], type_, call, node.name))
    schedule = finished.schedule
    schedule.digest = fingerprint(schedule)
    # persistent ids are places in decode's list of the nodes, the graph and the optimizer
    refs: dict[int, Any] = {id(n): i for i, n in enumerate(users + made)}
    refs[id(request.graph)] = len(users) + len(made)
    if request.optimizer is not None:
        refs[id(request.optimizer)] = len(users) + len(made) + 1
    # the request's constant arrays (constant buffers hold them) by reference too: decode gives the
    # graph's own arrays back, where drug placed them (aligned, on huge pages), not unpickled copies
    refs.update((id(n.op.value), (CONSTANT_VALUE, i)) for i, n in enumerate(users) if isinstance(n.op, ConstantOp))
    head, body = io.BytesIO(), io.BytesIO()
    try:  # the made nodes' ops first: decode makes the nodes before it reads what refers to them
        _Pickler(head, {}).dump((records, call_records))
        _Pickler(body, refs).dump((finished, _portable_schedule(schedule), schedule.digest))
    except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as error:  # a lambda, a lock, ...
        raise NotPortable(str(error)) from None
    return FORMAT + len(head.getvalue()).to_bytes(8, "little") + head.getvalue() + body.getvalue()


def _made_nodes(finished: Program, user_index: dict[int, int], mark: int) -> list[Node]:
    """The nodes the passes created, in creation order; NotPortable if the program refers to a
    node made before the build that the request does not reach."""
    seen: dict[int, Node] = {}
    stack = list(_referenced(finished))
    while stack:
        node = stack.pop()
        if node.id in seen or node.id in user_index:
            continue
        if node.id <= mark or node.graph is not finished.graph:
            raise NotPortable(f"node {node.label} is not reached by the request")
        seen[node.id] = node
        stack.extend(node.inputs)
    return sorted(seen.values(), key=lambda n: n.id)


def _referenced(program: Program) -> Iterable[Node]:
    yield from program.nodes
    yield from program.outputs
    yield from program.wrt
    yield from program.grads
    for leaf, new in program.updates:
        yield leaf
        yield new
    for kernel in program.kernels:
        yield from kernel.nodes


def _call_ref(call: Call | None, user_calls: dict, calls: dict, records: list, ref) -> tuple | None:
    """How a made node's call is stored: one a user node has, or one the compiler made."""
    if call is None:
        return None
    if id(call) in user_calls:
        return ("user", user_calls[id(call)])
    if id(call) not in calls:
        output = ref(call.output) if call.output is not None else None
        calls[id(call)] = len(records)
        records.append((_name_parts(call.name, ref), call.kind, call.composite, output))
    return ("made", calls[id(call)])


def _name_parts(name: str, ref) -> list:
    """A compiler call's name (`gradient of relu#12`) as text and references to the nodes whose
    ids it shows, which are other ids in the process that decodes it."""
    parts: list = []
    at = 0
    for match in NODE_ID.finditer(name):
        try:
            node_ref = ref(int(match[1]))
        except KeyError:  # a node the passes made and replaced (mode specialization): its number stays
            continue
        parts += [name[at : match.start(1)], node_ref]
        at = match.end(1)
    return parts + [name[at:]]


class _Pickler(pickle.Pickler):
    """Pickles the graph, the optimizer and nodes as the references `refs` gives them (by object
    identity: a node's == builds a node); any other node or graph is NotPortable."""

    def __init__(self, file, refs: dict[int, Any]):
        super().__init__(file, protocol=5)
        self.refs = refs

    def persistent_id(self, obj: Any) -> Any:
        found = self.refs.get(id(obj))
        if found is None and isinstance(obj, (Node, Graph)):
            raise NotPortable(f"{obj!r} is not part of the request or the program")
        return found


def _portable_schedule(schedule: Schedule) -> dict[str, Any]:
    """The schedule's fields keyed by node id, keyed by node instead (ids differ between processes)."""
    if tuple(f.name for f in dataclasses.fields(schedule)) != SCHEDULE_FIELDS:
        raise NotPortable("the schedule has fields this module does not know")
    nodes = {n.id: n for kernel in schedule.kernels for n in kernel.nodes}
    nodes.update((n.id, n) for n in schedule.program.nodes)
    for nid, slot in schedule.workspaces.items():
        if schedule.buffers[slot].key != ("workspace", nid):
            raise NotPortable(f"workspace buffer {slot} has the key {schedule.buffers[slot].key!r}")
    try:
        return {
            "buffer_of": [(nodes[nid], slot) for nid, slot in schedule.buffer_of.items()],
            "transposed": [nodes[nid] for nid in sorted(schedule.transposed)],
            "workspaces": [(nodes[nid], slot) for nid, slot in schedule.workspaces.items()],
        }
    except KeyError as error:
        raise NotPortable(f"the schedule names node id {error} outside the program") from None


def decode(data: bytes, request: Program) -> Program:
    """The program `encode` stored, for this `request` (whose `request_text` must be the one it
    was stored under). Raises on bytes it does not recognise."""
    if not data.startswith(FORMAT):
        raise ValueError("not a stored program")
    at = len(FORMAT)
    size = int.from_bytes(data[at : at + 8], "little")
    records, call_records = pickle.loads(data[at + 8 : at + 8 + size])
    nodes = request_nodes(request)  # the request's, then the made ones as they are made (`ref` in encode)
    users = len(nodes)
    calls: list[Call] = []
    with recording(None):  # nodes of no user call, like those the passes make
        for op, inputs, type_, _, name in records:
            node = Node(request.graph, op, [nodes[i] for i in inputs], type_)
            node.name = name  # a user's name a pass carried over to the node standing in for it
            nodes.append(node)
    for parts, kind, composite, output in call_records:
        call = Call("".join(part if isinstance(part, str) else str(nodes[part].id) for part in parts), kind)
        call.composite = composite
        if output is not None:
            call.finish(nodes[output])
        calls.append(call)
    for node, (_, _, _, call_ref, _) in zip(nodes[users:], records):
        if call_ref is not None:
            node.call = nodes[call_ref[1]].call if call_ref[0] == "user" else calls[call_ref[1]]
    unpickler = pickle.Unpickler(io.BytesIO(data[at + 8 + size :]))
    table = nodes + [request.graph, request.optimizer]
    unpickler.persistent_load = lambda pid: nodes[pid[1]].op.value if isinstance(pid, tuple) else table[pid]
    finished, portable, digest = unpickler.load()
    schedule: Schedule = finished.schedule
    schedule.buffer_of = {node.id: slot for node, slot in portable["buffer_of"]}
    schedule.transposed = {node.id for node in portable["transposed"]}
    schedule.workspaces = {node.id: slot for node, slot in portable["workspaces"]}
    for node, slot in portable["workspaces"]:
        schedule.buffers[slot].key = ("workspace", node.id)
    schedule.digest = digest
    return finished
