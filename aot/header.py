"""The public header <name>.h of a generated library: self-contained, documented per function."""

from __future__ import annotations

from pathlib import Path

from .. import __version__
from .csource import param_type, signatures
from .layout import Model, Table
from .lower import Target

COMMON = Path(__file__).parent / "csrc" / "drug_aot_common.h"


def _shape(shape: tuple) -> str:
    return "[" + ", ".join("batch" if d is None else str(d) for d in shape) + "]"


def _arguments_doc(table: Table) -> list[str]:
    lines = [f"     {v.c_name}: {v.dtype} {_shape(v.shape)}" for v in table.inputs]
    for v in table.outputs:
        if table.name == "train_step":
            lines.append(f"     {v.c_name}: receives the {v.dtype} loss of this batch (before the update); may be NULL")
        else:
            lines.append(f"     {v.c_name}: {v.dtype} {_shape(v.shape)}, written")
    return lines


def _sgemm_typedef(name: str, blas_int_bits: int) -> list[str]:
    i = f"int{blas_int_bits}_t"
    kind = "LP64: 32-bit integers, as in" if blas_int_bits == 32 else "ILP64: 64-bit integers, as in"
    example = (
        "Debian's libopenblas-dev, Netlib CBLAS, MKL's LP64 interface"
        if blas_int_bits == 32
        else "OpenBLAS built with INTERFACE64 (cblas_sgemm64_) or NumPy's scipy_cblas_sgemm64_"
    )
    return [
        f"/* The CBLAS sgemm this library calls ({kind} {example}).",
        "   It is always called row-major (order 101); trans_a/trans_b are 111 (no) or 112 (transpose).",
        "   A cblas_sgemm declared with enum parameters needs a cast, which is ABI-compatible. */",
        f"typedef void (*drug_{name}_sgemm_fn)(int order, int trans_a, int trans_b, {i} m, {i} n, {i} k,",
        f"                                  float alpha, const float *a, {i} lda, const float *b, {i} ldb,",
        f"                                  float beta, float *c, {i} ldc);",
    ]


def render(model: Model, target: Target, blas_int_bits: int, source: str) -> str:
    n, N = model.name, model.name.upper()
    sig = signatures(model)
    value = param_type(model)
    common = COMMON.read_text().split("\n", 2)[2].strip()  # without its own two-line comment
    cblas = "cblas_sgemm" if blas_int_bits == 32 else "cblas_sgemm64_"
    lines = [
        f"/* {n}.h: the C interface of lib{n}.so, made by drug-compile {__version__} from {source}",
        f"   for CPU '{target.cpu}' ({target.triple}).",
        "",
        "   No Python is needed at run time: the library calls only libc, libm and the sgemm given to",
        f"   drug_{n}_create (for the products its own sgemm leaves to a BLAS: vectors, empty depths), e.g.",
        f"       drug_{n} *h = drug_{n}_create((drug_{n}_sgemm_fn){cblas});",
        "   A handle owns the parameters, the optimizer state and the activations. Calls on one handle must",
        "   not overlap (use one handle per thread); handles are independent of each other.",
        f"   Functions returning int return DRUG_OK (0) or a DRUG_ERR_* code, and drug_{n}_last_error(h)",
        "   then says why; a call that fails before its step runs changes nothing. Arrays are row-major",
        f"   (C order); `batch` is bound per call, 1 <= batch <= DRUG_{N}_MAX_BATCH. */",
        f"#ifndef DRUG_{N}_H",
        f"#define DRUG_{N}_H",
        "",
        "#include <stdint.h>",
        "",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "",
        common,
        "",
        *_sgemm_typedef(n, blas_int_bits),
        "",
        f"typedef struct drug_{n} drug_{n};",
        "",
        f"/* The largest batch a call takes (every GEMM dimension then fits the BLAS's {blas_int_bits}-bit ints). */",
        f"#define DRUG_{N}_MAX_BATCH {model.max_batch}",
        "",
        "/* A handle with the compiled-in parameters and fresh optimizer state (learning rate included);",
        "   NULL when sgemm is NULL or memory runs out. destroy(NULL) does nothing. */",
        f"{sig['create']};",
        f"{sig['destroy']};",
        "",
        '/* The message of the last failed call on h ("" after a success); never NULL. */',
        f"{sig['last_error']};",
        "",
    ]
    train, predict = model.table("train_step"), model.table("predict")
    if train:
        lines += [
            "/* One training step: forward, backward and optimizer update; increments the step count.",
            *_arguments_doc(train),
            "   An out-of-range label returns DRUG_ERR_INDEX before anything is updated. */",
            f"{sig['train_step']};",
            "",
        ]
    if predict:
        lines += [
            "/* Inference with the current parameters.",
            *_arguments_doc(predict),
            "*/",
            f"{sig['predict']};",
            "",
        ]
    names = ", ".join(f"{p.name} {_shape(p.shape)}" for p in model.params)
    lines += [
        f"/* Parameters ({names}), all {value if value != 'void' else 'mixed dtypes'}:",
        "   param_info describes parameter `index` in [0, param_count) (NULL outside); get/set copy a parameter",
        "   out/in by name, and `count` must equal its element count. */",
        f"{sig['param_count']};",
        f"{sig['param_info']};",
        f"{sig['get_param']};",
        f"{sig['set_param']};",
        "",
        "/* The optimizer's learning rate (Python's train.lr); DRUG_ERR_UNSUPPORTED without an optimizer. */",
        f"{sig['get_lr']};",
        f"{sig['set_lr']};",
        "",
        "/* Training steps taken (restored by load); -1 for a NULL handle. */",
        f"{sig['step_count']};",
        "",
        "/* Checkpoints in the format of Python's train.save() / train.load() (an .npz with a SHA-256): either",
        "   side reads what the other writes. save writes atomically (temporary file, fsync, rename); load",
        "   checks the whole file and changes nothing unless it is intact and fits this model. */",
        f"{sig['save']};",
        f"{sig['load']};",
        "",
        f"/* DRUG_{N}_MAX_BATCH, and the activation memory a handle allocates for `batch` (-1 outside the range). */",
        f"{sig['max_batch']};",
        f"{sig['arena_bytes']};",
        "",
        "#ifdef __cplusplus",
        "}",
        "#endif",
        "",
        f"#endif /* DRUG_{N}_H */",
        "",
    ]
    return "\n".join(lines)
