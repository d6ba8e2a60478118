"""The generated C of a library: the model's tables for the runtime (csrc/drug_rt.h) and the public
functions of <name>.h as thin wrappers around the runtime's."""

from __future__ import annotations

import numpy as np

from .. import __version__
from .layout import KINDS, Model, Table, Tensor, Value

C_TYPES = {"float32": "float", "int32": "int32_t", "int64": "int64_t"}


def c_type(dtype: np.dtype) -> str:
    return C_TYPES[np.dtype(dtype).name]


def param_type(model: Model) -> str:
    """float when every parameter is float32 (the usual case), else void."""
    return "float" if all(p.dtype == np.float32 for p in model.params) else "void"


def signatures(model: Model) -> dict[str, str]:
    """Every public function, by name: its C declaration (without the semicolon)."""
    n, value = model.name, param_type(model)
    out = {
        "create": f"drug_{n} *drug_{n}_create(drug_{n}_sgemm_fn sgemm)",
        "destroy": f"void drug_{n}_destroy(drug_{n} *h)",
        "last_error": f"const char *drug_{n}_last_error(const drug_{n} *h)",
    }
    for table in model.tables:
        out[table.name] = f"int drug_{n}_{table.name}(drug_{n} *h, {arguments(table)})"
    out |= {
        "param_count": f"int64_t drug_{n}_param_count(void)",
        "param_info": f"const drug_tensor_info *drug_{n}_param_info(int64_t index)",
        "get_param": f"int drug_{n}_get_param(drug_{n} *h, const char *name, {value} *values, int64_t count)",
        "set_param": f"int drug_{n}_set_param(drug_{n} *h, const char *name, const {value} *values, int64_t count)",
        "get_lr": f"int drug_{n}_get_lr(drug_{n} *h, float *lr)",
        "set_lr": f"int drug_{n}_set_lr(drug_{n} *h, float lr)",
        "step_count": f"int64_t drug_{n}_step_count(const drug_{n} *h)",
        "save": f"int drug_{n}_save(drug_{n} *h, const char *path)",
        "load": f"int drug_{n}_load(drug_{n} *h, const char *path)",
        "max_batch": f"int64_t drug_{n}_max_batch(void)",
        "arena_bytes": f"int64_t drug_{n}_arena_bytes(int64_t batch)",
    }
    return out


def arguments(table: Table) -> str:
    inputs = [f"const {c_type(v.dtype)} *{v.c_name}" for v in table.inputs]
    outputs = [f"{c_type(v.dtype)} *{v.c_name}" for v in table.outputs]
    return ", ".join(inputs + ["int64_t batch"] + outputs)


def exported(model: Model) -> list[str]:
    return [f"drug_{model.name}_{key}" for key in signatures(model)]


class _Shapes:
    """`static const int64_t` arrays for every distinct shape (-1 = batch)."""

    def __init__(self) -> None:
        self.names: dict[tuple, str] = {}

    def ref(self, shape: tuple) -> str:
        if not shape:
            return "NULL"
        key = tuple(-1 if d is None else int(d) for d in shape)
        return self.names.setdefault(key, f"shape{len(self.names)}")

    def definitions(self) -> list[str]:
        return [f"static const int64_t {name}[] = {{{', '.join(map(str, key))}}};" for key, name in self.names.items()]


def _tensor(t: Tensor, shapes: _Shapes, blob: str | None) -> str:
    size = int(np.prod(t.shape, dtype=np.int64))
    info = f'{{"{t.name}", {len(t.shape)}, {shapes.ref(t.shape)}, {size}, "{t.dtype.str}"}}'
    data = f"{blob} + {t.offset}" if blob else "NULL"
    return f"    {{{info}, {t.dtype.itemsize}, {data}, {t.fill!r}}},"


def _array(ctype: str, name: str, rows: list[str]) -> tuple[list[str], str]:
    """A static array definition, and how to refer to it (C has no empty arrays: NULL then)."""
    if not rows:
        return [], "NULL"
    return [f"static const {ctype} {name}[] = {{", *rows, "};"], name


def _table(t: Table, n: str, shapes: _Shapes) -> list[str]:
    buffers = [
        f"    {{{KINDS[b.kind]}, {index}, {b.dtype.itemsize}, {len(b.shape)}, {shapes.ref(b.shape)}, "
        f"{b.live[0]}, {b.live[1]}}},"
        for b, index in t.buffers
    ]
    lines, buffers_ref = _array("drugrt_buffer", f"{t.name}_buffers", buffers)
    names, names_ref = _array("char *const", f"{t.name}_inputs", [f'    "{v.c_name}",' for v in t.inputs])
    outputs = [
        f'    {{"{v.c_name}", {v.slot}, {v.dtype.itemsize}, {len(v.shape)}, {shapes.ref(v.shape)}}},' for v in t.outputs
    ]
    out, outputs_ref = _array("drugrt_output", f"{t.name}_outputs", outputs)
    train = int(t.name == "train_step")
    program = (
        f'static const drugrt_program {t.name} = {{"{t.name}", {t.entry}, {len(t.buffers)}, {buffers_ref}, '
        f"{len(t.inputs)}, {names_ref}, {len(t.outputs)}, {outputs_ref}, {train}, {train}}};"
    )
    return [*lines, *names, *out, program, ""]


def _run_wrapper(model: Model, t: Table, which: int, declaration: str) -> list[str]:
    n = model.name

    def pointers(values: list[Value]) -> str:
        return ", ".join(v.c_name for v in values) or "NULL"

    return [
        f"{declaration} {{",
        f"    const void *inputs[] = {{{pointers(t.inputs)}}};",
        f"    void *outputs[] = {{{pointers(t.outputs)}}};",
        f'    return h ? drugrt_run(&h->rt, "drug_{n}_{t.name}", {which}, inputs, batch, outputs) : DRUG_ERR_NULL;',
        "}",
        "",
    ]


def render(model: Model) -> str:
    n, shapes = model.name, _Shapes()
    blob = f"drug_{n}_blob"
    body: list[str] = []
    params, params_ref = _array("drugrt_tensor", "params", [_tensor(p, shapes, blob) for p in model.params])
    states, states_ref = _array("drugrt_tensor", "states", [_tensor(s, shapes, None) for s in model.states])
    consts, consts_ref = _array("drugrt_tensor", "consts", [_tensor(c, shapes, blob) for c in model.consts])
    body += [*params, *states, *consts, ""]
    for table in model.tables:
        body += _table(table, n, shapes)
    programs = [f"&{name}" if model.table(name) else "NULL" for name in ("train_step", "predict")]
    body += [
        f'static const drugrt_model model = {{"{n}", {model.max_batch}, {len(model.params)}, {params_ref}, '
        f"{model.saved_params}, {len(model.states)}, {states_ref}, {len(model.consts)}, {consts_ref}, "
        f"{model.lr_state}, {{{', '.join(programs)}}}}};",
        "",
    ]
    sig = {key: f"DRUG_EXPORT {text}" for key, text in signatures(model).items()}
    body += [
        f"{sig['create']} {{",
        "    if (!sgemm) return NULL;",
        f"    drug_{n} *h = malloc(sizeof *h);",
        "    if (h && drugrt_init(&h->rt, &model, (void *)sgemm) != DRUG_OK) {",
        "        drugrt_release(&h->rt);",
        "        free(h);",
        "        return NULL;",
        "    }",
        "    return h;",
        "}",
        "",
        f"{sig['destroy']} {{",
        "    if (h) drugrt_release(&h->rt);",
        "    free(h);",
        "}",
        "",
        f"{sig['last_error']} {{",
        f'    return h ? h->rt.error : "drug_{n}: the handle is NULL (drug_{n}_create returns NULL when sgemm is NULL '
        'or memory runs out)";',
        "}",
        "",
    ]
    for which, name in enumerate(("train_step", "predict")):
        if model.table(name):
            body += _run_wrapper(model, model.table(name), which, sig[name])
    body += [
        f"{sig['param_count']} {{ return model.nparams; }}",
        "",
        f"{sig['param_info']} {{ return drugrt_param_info(&model, index); }}",
        "",
        f"{sig['get_param']} {{",
        f'    return h ? drugrt_param(&h->rt, "drug_{n}_get_param", name, values, count, 0) : DRUG_ERR_NULL;',
        "}",
        "",
        f"{sig['set_param']} {{",
        f'    return h ? drugrt_param(&h->rt, "drug_{n}_set_param", name, (void *)values, count, 1) : DRUG_ERR_NULL;',
        "}",
        "",
        f'{sig["get_lr"]} {{ return h ? drugrt_lr(&h->rt, "drug_{n}_get_lr", lr, 0) : DRUG_ERR_NULL; }}',
        "",
        f'{sig["set_lr"]} {{ return h ? drugrt_lr(&h->rt, "drug_{n}_set_lr", &lr, 1) : DRUG_ERR_NULL; }}',
        "",
        f"{sig['step_count']} {{ return h ? h->rt.step : -1; }}",
        "",
        f'{sig["save"]} {{ return h ? drugrt_save(&h->rt, "drug_{n}_save", path) : DRUG_ERR_NULL; }}',
        "",
        f'{sig["load"]} {{ return h ? drugrt_load(&h->rt, "drug_{n}_load", path) : DRUG_ERR_NULL; }}',
        "",
        f"{sig['max_batch']} {{ return model.max_batch; }}",
        "",
        f"{sig['arena_bytes']} {{",
        "    int64_t total = 0;",
        "    if (batch < 1 || batch > model.max_batch) return -1;",
        "    for (int which = 0; which < 2; which++) {",
        "        int64_t bytes = model.programs[which] ? drugrt_arena_bytes(model.programs[which], batch) : 0;",
        "        if (bytes < 0) return -1;",
        "        total += bytes;",
        "    }",
        "    return total;",
        "}",
    ]
    entries = [f"int32_t {t.entry}(void **buffers, int64_t batch, void **runtime);" for t in model.tables]
    head = [
        f"/* Generated by drug-compile {__version__}: model '{n}' as tables for the drug AOT runtime, and the",
        f"   public functions {n}.h declares. */",
        "#include <stdlib.h>",
        "",
        f'#include "{n}.h"',
        '#include "drug_rt.h"',
        "",
        "/* Everything else stays inside the library (-fvisibility=hidden and the export map). */",
        '#define DRUG_EXPORT __attribute__((visibility("default")))',
        "",
        f"struct drug_{n} {{",
        "    drugrt_handle rt;",
        "};",
        "",
        "/* In the object file drug-compile emits with LLVM. */",
        f"extern const unsigned char {blob}[];",
        *entries,
        "",
        *shapes.definitions(),
        "",
    ]
    return "\n".join(head + body) + "\n"
