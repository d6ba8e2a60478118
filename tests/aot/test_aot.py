"""drug-compile: libraries built from an MLP and a small CNN train and predict from C like the JIT
does, load without Python, refuse bad calls with messages, need only libc/libm, and exchange
checkpoints with Python in both directions."""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from drug import GraphError
from drug.aot import load_spec
from drug.aot.cli import main as drug_compile_main
from drug.backends.llvm import blas

STEPS, TRAIN_BATCH, PREDICT_BATCH = 20, 8, 5
DRIVER = Path(__file__).with_name("aot_driver.c")
DRUG_COMPILE = Path(sys.executable).with_name("drug-compile")

MODELS = {
    "mlp": """
import drug as dg

def build():
    g = dg.Graph(seed=3)
    x, y = g.input("x", (None, 20)), g.input("y", (None,), dtype="int32")
    h = dg.relu(x @ g.parameter("w1", (20, 32)) + g.parameter("b1", (32,), init="zeros"))
    h = dg.relu(h @ g.parameter("w2", (32, 16)) + g.parameter("b2", (16,), init="zeros"))
    logits = (h @ g.parameter("w3", (16, 5)) + g.parameter("b3", (5,), init="zeros")).named("logits")
    return dict(graph=g, loss=dg.softmax_cross_entropy(logits, y), optimizer=dg.Adam(lr=0.01), outputs=[logits])
""",
    "cnn": """
import drug as dg

def build():
    g = dg.Graph(seed=4)
    x, y = g.input("x", (None, 2, 8, 8)), g.input("y", (None,), dtype="int32")
    h = dg.relu(dg.conv2d(x, g.parameter("conv", (4, 2, 3, 3)), padding="same"))
    logits = dg.global_pool(h, kind="avg") @ g.parameter("dense", (4, 5)) + g.parameter("bias", (5,), init="zeros")
    return dict(graph=g, loss=dg.softmax_cross_entropy(logits, y), optimizer=dg.Adam(lr=0.02), outputs=[logits])
""",
}
X_SHAPES = {"mlp": (20,), "cnn": (2, 8, 8)}
CLASSES = 5

# The C programs link the system OpenBLAS (Debian's 0.3.21, LP64); the JIT calls the OpenBLAS bundled
# with NumPy (0.3.31, ILP64). Both run the same generated code, but their sgemm kernels may sum in
# another order, so a GEMM result can differ in its last bits (~1e-7 relative) and 20 Adam steps carry
# that on. For these small models the two agreed exactly here; for the 784-512-256-10 MNIST MLP we
# measured up to 2e-7 relative on 20 losses and 3e-7 on the logits. rtol=2e-5 is 100x that, while a
# wrong kernel, a missed update or a stale buffer moves losses and logits by 1e-3 or more.
BLAS_RTOL, BLAS_ATOL = 2e-5, 2e-6


def _system_blas_ready(workdir: Path) -> str | None:
    """Why the C side cannot be tested here, or None: needs cc, cblas.h and -lopenblas."""
    if shutil.which("cc") is None:
        return "no C compiler `cc`"
    probe = workdir / "probe.c"
    probe.write_text("#include <cblas.h>\nint main(void) { return cblas_sgemm == 0; }\n")
    result = subprocess.run(["cc", str(probe), "-lopenblas", "-o", str(workdir / "probe")], capture_output=True)
    if result.returncode != 0:
        return "OpenBLAS development files missing (apt-get install libopenblas-dev)"
    return None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("aot")
    reason = _system_blas_ready(path)
    if reason:
        pytest.skip(reason)
    return path


@dataclass
class Built:
    model: str  # a key of MODELS
    name: str
    source: Path
    out: Path
    manifest: dict

    @property
    def library(self) -> Path:
        return self.out / f"lib{self.name}.so"

    def spec(self):
        return load_spec(str(self.source))[0]


def drug_compile(
    workdir: Path, model: str, *args: str, name: str | None = None, module: bool = False, text: str | None = None
) -> Built:
    """Run drug-compile (the console script, or `python -m drug.compile`) on MODELS[model] (or `text`)."""
    name = name or model
    source = workdir / f"{name}.py"
    source.write_text(text or MODELS[model])
    out = workdir / name
    command = [sys.executable, "-m", "drug.compile"] if module else [str(DRUG_COMPILE)]
    result = subprocess.run([*command, str(source), "--out", str(out), *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return Built(model, name, source, out, json.loads((out / f"{name}.json").read_text()))


def batches(model: str, seed: int = 0) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """STEPS training batches, learnable (the label is the argmax of a fixed projection), and a
    prediction batch of another size."""
    rng = np.random.default_rng(seed)
    shape = X_SHAPES[model]
    projection = rng.standard_normal((int(np.prod(shape)), CLASSES))
    train = []
    for _ in range(STEPS):
        x = rng.standard_normal((TRAIN_BATCH, *shape)).astype(np.float32)
        train.append((x, (x.reshape(TRAIN_BATCH, -1) @ projection).argmax(1).astype(np.int32)))
    return train, rng.standard_normal((PREDICT_BATCH, *shape)).astype(np.float32)


def data_file(workdir: Path, model: str) -> Path:
    train, x_predict = batches(model)
    path = workdir / f"{model}.data"
    path.write_bytes(b"".join(x.tobytes() + y.tobytes() for x, y in train) + x_predict.tobytes())
    return path


def build_driver(built: Built) -> Path:
    x_size = int(np.prod(X_SHAPES[built.model]))
    exe = built.out / "driver"
    defines = [
        f"-DMODEL={built.name}",
        f'-DMODEL_HEADER="{built.name}.h"',
        f"-DX_SIZE={x_size}",
        f"-DOUT_SIZE={CLASSES}",
        f"-DTRAIN_BATCH={TRAIN_BATCH}",
        f"-DPREDICT_BATCH={PREDICT_BATCH}",
        f"-DSTEPS={STEPS}",
    ]
    flags = ["-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{built.out}", f"-L{built.out}"]
    libraries = [f"-l{built.name}", "-lopenblas", f"-Wl,-rpath,{built.out}"]
    command = ["cc", *flags, *defines, str(DRIVER), *libraries, "-o", str(exe)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return exe


def run(*command) -> str:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stderr}"
    return result.stdout


def jit_reference(built: Built):
    """The same graph (same seed) compiled by the JIT, trained on the same batches."""
    spec = built.spec()
    train = spec.graph.compile(loss=spec.loss, optimizer=spec.optimizer)
    predict = spec.graph.compile(outputs=spec.outputs[0])
    data, x_predict = batches(built.model)
    losses = [train(x=x, y=y) for x, y in data]
    return spec, train, np.array(losses, np.float32), predict(x=x_predict)


def split_params(flat: np.ndarray, manifest: dict) -> dict[str, np.ndarray]:
    out, at = {}, 0
    for p in manifest["parameters"]:
        size = int(np.prod(p["shape"], dtype=np.int64))
        out[p["name"]] = flat[at : at + size].reshape(p["shape"])
        at += size
    assert at == flat.size
    return out


C = ctypes
SIGNATURES = {  # for the test models: train_step(h, x, y, batch, loss), predict(h, x, batch, out)
    "create": ([C.c_void_p], C.c_void_p),
    "destroy": ([C.c_void_p], None),
    "train_step": ([C.c_void_p] * 3 + [C.c_int64, C.c_void_p], C.c_int),
    "predict": ([C.c_void_p] * 2 + [C.c_int64, C.c_void_p], C.c_int),
    "get_param": ([C.c_void_p, C.c_char_p, C.c_void_p, C.c_int64], C.c_int),
    "set_lr": ([C.c_void_p, C.c_float], C.c_int),
    "save": ([C.c_void_p, C.c_char_p], C.c_int),
    "arena_bytes": ([C.c_int64], C.c_int64),
}


class Api:
    """The drug_<name>_* functions of a library, through ctypes in this process."""

    def __init__(self, built: Built):
        self.lib, self.name = ctypes.CDLL(str(built.library)), built.name

    def has(self, function: str) -> bool:
        return hasattr(self.lib, f"drug_{self.name}_{function}")

    def __getattr__(self, function: str):
        fn = getattr(self.lib, f"drug_{self.name}_{function}")
        fn.argtypes, fn.restype = SIGNATURES[function]
        return fn


def numpy_sgemm() -> tuple[int, str]:
    """The sgemm of NumPy's BLAS and its --blas-int. Libraries run in this process get it: loading a
    second BLAS here (the system's) would start a second thread pool (and other tests check there is one)."""
    gemm = blas.find_gemm("float32")
    return gemm.address, str(gemm.int_bits)


@pytest.fixture(scope="module")
def trained(workdir):
    """Per model: the library, its C driver, and the driver's `train` results."""
    results = {}
    for model, module in (("mlp", True), ("cnn", False)):
        built = drug_compile(workdir, model, module=module)
        driver = build_driver(built)
        data = data_file(workdir, model)
        out, ckpt = built.out / "train.bin", built.out / "from_c.npz"
        run(driver, "train", data, out, ckpt)
        flat = np.fromfile(out, np.float32)
        losses, rest = flat[:STEPS], flat[STEPS:]
        predictions = rest[: PREDICT_BATCH * CLASSES].reshape(PREDICT_BATCH, CLASSES)
        params = split_params(rest[PREDICT_BATCH * CLASSES :], built.manifest)
        results[model] = dict(
            built=built, driver=driver, data=data, losses=losses, predictions=predictions, params=params, ckpt=ckpt
        )
    return results


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_c_training_matches_the_jit(trained, model):
    got = trained[model]
    _, _, losses, predictions = jit_reference(got["built"])
    assert np.all(np.isfinite(got["losses"]))
    assert got["losses"][-5:].mean() < got["losses"][:5].mean()  # it learns
    np.testing.assert_allclose(got["losses"], losses, rtol=BLAS_RTOL, atol=BLAS_ATOL)
    np.testing.assert_allclose(got["predictions"], predictions, rtol=BLAS_RTOL, atol=BLAS_ATOL)


def test_manifest_describes_the_library(trained):
    m = trained["mlp"]["built"].manifest
    assert m["name"] == "mlp" and m["drug_version"] and m["target"]["cpu"] and m["blas"]["int_bits"] == 32
    train, predict = m["functions"]["train_step"], m["functions"]["predict"]
    assert [(i["name"], i["shape"], i["dtype"]) for i in train["inputs"]] == [
        ("x", [None, 20], "float32"),
        ("y", [None], "int32"),
    ]
    assert predict["outputs"] == [{"name": "logits", "shape": [None, CLASSES], "dtype": "float32"}]
    assert [(p["name"], p["shape"]) for p in m["parameters"]][:2] == [("w1", [20, 32]), ("b1", [32])]
    assert {s["name"] for s in m["optimizer_state"]} >= {"hyper/lr", "w1/momentum", "w1/magnitude"}
    header = (trained["mlp"]["built"].out / "mlp.h").read_text()
    signature = "int drug_mlp_train_step(drug_mlp *h, const float *x, const int32_t *y, int64_t batch, float *loss)"
    assert signature in header
    api = Api(trained["mlp"]["built"])
    for batch in ("1", "128"):  # the C runtime packs the arena exactly as runtime/arena.py does
        assert api.arena_bytes(int(batch)) == train["arena_bytes"][batch] + predict["arena_bytes"][batch]


def test_bad_calls_return_codes_with_messages(trained, workdir):
    got = trained["mlp"]
    damaged = workdir / "damaged.npz"
    raw = bytearray(got["ckpt"].read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    damaged.write_bytes(raw)
    truncated = workdir / "truncated.npz"
    truncated.write_bytes(got["ckpt"].read_bytes()[:-200])
    lines = run(got["driver"], "errors", got["data"], damaged, truncated, trained["cnn"]["ckpt"]).splitlines()
    report = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in lines}

    def check(name: str, code: int, *words: str) -> None:
        status, _, message = report[name].partition(" ")
        assert int(status) == code, f"{name}: {report[name]}"
        for word in words:
            assert word in message, f"{name}: {message!r} lacks {word!r}"

    ok, null, batch, name, size, io, ckpt, index, unsupported = 0, 1, 2, 3, 4, 6, 7, 8, 9
    check("batch_zero", batch, "drug_mlp_train_step", "batch 0 is outside [1, 65536]")
    check("batch_negative", batch, "drug_mlp_predict", "batch -5")
    check("batch_over_max", batch, "batch 65537")
    check("null_input", null, "input 'x' is NULL")
    check("null_output", null, "output 'logits' is NULL")
    assert report["good_call_clears_message"] == "0 "
    check("unknown_param", name, "no parameter named 'no_such_param'", "'w1'", "'b3'")
    check("null_param_name", null, "name is NULL")
    check("wrong_count", size, "parameter 'w1' has 640 elements, count is 641")
    check("null_values", null, "values is NULL")
    check("null_lr", null, "lr is NULL")
    check("missing_file", io, "cannot read checkpoint", "No such file")
    check("damaged_file", ckpt, "damaged.npz")
    check("truncated_file", ckpt, "unreadable or truncated")
    check(
        "foreign_checkpoint",
        ckpt,
        "does not fit this model; nothing was loaded",
        "missing parameter 'w1'",
        "unexpected parameter 'conv'",
    )
    check("null_path", null, "path is NULL")
    check("unwritable_path", io, "cannot create a temporary file")
    check("label_out_of_range", index, "out of range")
    assert report["unchanged_after_bad_label"] == "1 0"
    assert report["null_handle_step"] == str(null) and report["null_handle_lr"] == str(null)
    assert "handle is NULL" in report["null_handle_message"]
    assert report["null_handle_step_count"] == "-1"
    assert report["create_null_sgemm"] == "1"
    assert report["param_info_out_of_range"] == "1 1"
    assert report["arena_bytes_out_of_range"] == "-1"
    assert float(report["lr"]) == pytest.approx(0.01)
    assert ok == 0 and unsupported == 9  # the codes documented in drug_aot_common.h


def test_checkpoint_from_c_loads_in_python_and_back(trained):
    got = trained["mlp"]
    built = got["built"]
    spec, train, _, _ = jit_reference(built)
    train.load(got["ckpt"])  # written by the C library
    assert train.step_count == STEPS
    for key, value in got["params"].items():
        np.testing.assert_array_equal(spec.graph.params[key], value, err_msg=key)
    assert train.lr == pytest.approx(0.01)
    resaved = built.out / "resaved_by_python.npz"
    train.save(resaved)
    out = built.out / "load.bin"
    run(got["driver"], "load", resaved, got["data"], out)
    flat = np.fromfile(out, np.float32)
    predictions, rest = flat[: PREDICT_BATCH * CLASSES], flat[PREDICT_BATCH * CLASSES :]
    np.testing.assert_array_equal(predictions.reshape(PREDICT_BATCH, CLASSES), got["predictions"])
    params = split_params(rest[:-3], built.manifest)  # then int64 step (two float slots) and lr
    for key, value in got["params"].items():
        np.testing.assert_array_equal(params[key], value, err_msg=key)
    assert int(rest[-3:-1].view(np.int64)[0]) == STEPS and rest[-1] == np.float32(0.01)


def test_checkpoint_from_python_loads_in_c(trained):
    got = trained["cnn"]
    built = got["built"]
    spec, train, _, predictions = jit_reference(built)  # 20 JIT steps
    ckpt = built.out / "from_python.npz"
    train.lr = 0.125
    train.save(ckpt)
    out = built.out / "load_python.bin"
    run(got["driver"], "load", ckpt, got["data"], out)
    flat = np.fromfile(out, np.float32)
    params = split_params(flat[PREDICT_BATCH * CLASSES : -3], built.manifest)
    for key, value in params.items():
        np.testing.assert_array_equal(value, spec.graph.params[key], err_msg=key)
    assert int(flat[-3:-1].view(np.int64)[0]) == STEPS and flat[-1] == np.float32(0.125)
    c_predictions = flat[: PREDICT_BATCH * CLASSES].reshape(PREDICT_BATCH, CLASSES)
    np.testing.assert_allclose(c_predictions, predictions, rtol=BLAS_RTOL, atol=BLAS_ATOL)


def _defined_symbols(library: str) -> set[str]:
    out = run("nm", "-D", "--defined-only", library)
    return {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}


def test_library_needs_only_libc_and_libm(trained):
    library = trained["cnn"]["built"].library
    undefined = [line.split() for line in run("nm", "-D", "--undefined-only", library).splitlines() if line.strip()]
    strong = {fields[-1].split("@")[0] for fields in undefined if fields[0] == "U"}
    system = set()
    for lib in ("libc.so.6", "libm.so.6"):
        system |= _defined_symbols(run("cc", f"-print-file-name={lib}").strip())
    assert strong and strong <= system, f"symbols outside libc/libm: {sorted(strong - system)}"
    assert not any("GOMP" in s or "omp_" in s or "cblas" in s for s in strong)
    needed = [line.split("[")[1].rstrip("]") for line in run("readelf", "-d", library).splitlines() if "NEEDED" in line]
    assert set(needed) <= {"libc.so.6", "libm.so.6"}, needed
    exported = _defined_symbols(str(library))
    assert exported and all(s.startswith("drug_cnn_") for s in exported), sorted(exported)
    # its GEMMs run drug's own sgemm, linked in and kept local (the version script exports none of it)
    local = {line.split()[-1] for line in run("nm", "--defined-only", library).splitlines() if line.strip()}
    assert {"drugrt_sgemm", "drugrt_sgemm_fallback", "drugrt_sconv", "drugrt_sconv_filter"} <= local


CTYPES_SCRIPT = r"""
import ctypes, ctypes.util, json, struct, sys
library, data_path, model, x_size, classes, steps, train_batch, predict_batch = sys.argv[1:]
x_size, classes, steps, train_batch, predict_batch = map(int, (x_size, classes, steps, train_batch, predict_batch))
blas = ctypes.CDLL(ctypes.util.find_library("openblas"))
lib = ctypes.CDLL(library)
api = lambda name: getattr(lib, f"drug_{model}_{name}")
api("create").restype = ctypes.c_void_p
api("create").argtypes = [ctypes.c_void_p]
api("last_error").restype = ctypes.c_char_p
api("last_error").argtypes = [ctypes.c_void_p]
api("train_step").argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64, ctypes.c_void_p]
api("predict").argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64, ctypes.c_void_p]
api("destroy").argtypes = [ctypes.c_void_p]
h = api("create")(ctypes.cast(blas.cblas_sgemm, ctypes.c_void_p))
data = open(data_path, "rb").read()
record = train_batch * (4 * x_size + 4)
losses = []
for step in range(steps):
    chunk = data[step * record : (step + 1) * record]
    x = (ctypes.c_float * (train_batch * x_size)).from_buffer_copy(chunk[: 4 * train_batch * x_size])
    y = (ctypes.c_int32 * train_batch).from_buffer_copy(chunk[4 * train_batch * x_size :])
    loss = ctypes.c_float()
    assert api("train_step")(h, x, y, train_batch, ctypes.byref(loss)) == 0, api("last_error")(h)
    losses.append(loss.value)
x = (ctypes.c_float * (predict_batch * x_size)).from_buffer_copy(data[steps * record :])
out = (ctypes.c_float * (predict_batch * classes))()
assert api("predict")(h, x, predict_batch, out) == 0, api("last_error")(h)
api("destroy")(h)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("drug", "llvmlite", "scipy", "numpy"))
print(json.dumps({"losses": losses, "predictions": list(out), "loaded": loaded}))
"""


def test_library_runs_from_ctypes_without_python_packages(trained):
    got = trained["mlp"]
    built = got["built"]
    command = [
        sys.executable,
        "-I",
        "-S",
        "-c",
        CTYPES_SCRIPT,
        built.library,
        got["data"],
        "mlp",
        20,
        CLASSES,
        STEPS,
        TRAIN_BATCH,
        PREDICT_BATCH,
    ]
    result = json.loads(run(*command))  # -I -S: no site-packages, so no drug, llvmlite, numpy or scipy to import
    assert result["loaded"] == []
    _, _, losses, predictions = jit_reference(built)
    np.testing.assert_allclose(result["losses"], losses, rtol=BLAS_RTOL, atol=BLAS_ATOL)
    np.testing.assert_allclose(
        np.reshape(result["predictions"], (PREDICT_BATCH, CLASSES)), predictions, rtol=BLAS_RTOL, atol=BLAS_ATOL
    )


def train_and_predict(api: Api, sgemm: int, model: str) -> tuple[np.ndarray, np.ndarray]:
    """STEPS train steps and a prediction through the library, as the C driver does."""
    handle = api.create(sgemm)
    data, x_predict = batches(model)
    losses = np.zeros(STEPS, np.float32)
    for i, (x, y) in enumerate(data):
        assert api.train_step(handle, x.ctypes.data, y.ctypes.data, TRAIN_BATCH, losses[i:].ctypes.data) == 0
    predictions = np.zeros((PREDICT_BATCH, CLASSES), np.float32)
    assert api.predict(handle, x_predict.ctypes.data, PREDICT_BATCH, predictions.ctypes.data) == 0
    api.destroy(handle)
    return losses, predictions


def test_library_given_numpys_blas_is_bit_identical_to_the_jit(workdir):
    """Same compiler, same BLAS (NumPy's sgemm, ILP64 here, passed at create time): identical results."""
    sgemm, bits = numpy_sgemm()
    built = drug_compile(workdir, "mlp", "--blas-int", bits, name="mlp_numpy_blas")
    assert built.manifest["blas"]["int_bits"] == int(bits)
    losses, predictions = train_and_predict(Api(built), sgemm, "mlp")
    _, _, jit_losses, jit_predictions = jit_reference(built)
    np.testing.assert_array_equal(losses, jit_losses)
    np.testing.assert_array_equal(predictions, jit_predictions)


def test_generic_target_with_baked_checkpoint(trained, workdir):
    """--target-cpu generic: no AVX instructions; --checkpoint: its parameters are the initial ones."""
    got = trained["mlp"]
    sgemm, bits = numpy_sgemm()
    args = ("--target-cpu", "generic", "--checkpoint", str(got["ckpt"]), "--blas-int", bits)
    built = drug_compile(workdir, "mlp", *args, name="mlp_portable")
    assert built.manifest["target"]["cpu"] in ("x86-64", "generic")
    assert built.manifest["checkpoint"] == str(got["ckpt"])
    if built.manifest["target"]["cpu"] == "x86-64":
        assert "%ymm" not in run("objdump", "-d", built.library)
    api = Api(built)
    handle = api.create(sgemm)
    for key, value in got["params"].items():
        baked = np.zeros_like(value)
        assert api.get_param(handle, key.encode(), baked.ctypes.data, baked.size) == 0
        np.testing.assert_array_equal(baked, value, err_msg=key)
    _, x = batches("mlp")  # the parameters the C driver predicted with, now in code without FMA or AVX
    predictions = np.zeros((PREDICT_BATCH, CLASSES), np.float32)
    assert api.predict(handle, x.ctypes.data, PREDICT_BATCH, predictions.ctypes.data) == 0
    np.testing.assert_allclose(predictions, got["predictions"], rtol=BLAS_RTOL, atol=BLAS_ATOL)
    api.destroy(handle)


def test_python_callback_ops_are_refused(workdir):
    source = workdir / "custom.py"
    source.write_text("""
import numpy as np
import drug as dg

class Cube(dg.Op):
    name = "cube"
    arity = 1
    def infer(self, x):
        return x
    def ref(self, x):
        return x**3
    def grad(self, g, out, x):
        return [g * 3.0 * x * x]

def build():
    g = dg.Graph()
    x = g.input("x", (None, 3))
    return dict(graph=g, outputs=[Cube()(x).named("cubed")])
""")
    result = subprocess.run(
        [str(DRUG_COMPILE), str(source), "--out", str(workdir / "custom")], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "node cubed (op 'cube')" in result.stderr and "cannot call Python" in result.stderr


def test_predict_only_library(workdir):
    """outputs without a loss: a predictor library, whose checkpoints a Python predictor loads."""
    text = MODELS["mlp"].replace("loss=dg.softmax_cross_entropy(logits, y), optimizer=dg.Adam(lr=0.01), ", "")
    sgemm, bits = numpy_sgemm()
    built = drug_compile(workdir, "mlp", "--blas-int", bits, name="predictor", text=text)
    assert list(built.manifest["functions"]) == ["predict"] and built.manifest["optimizer_state"] == []
    api = Api(built)
    assert api.has("predict") and not api.has("train_step")
    handle = api.create(sgemm)
    assert api.set_lr(handle, 0.5) == 9  # DRUG_ERR_UNSUPPORTED: no optimizer
    _, x = batches("mlp")
    out = np.zeros((PREDICT_BATCH, CLASSES), np.float32)
    assert api.predict(handle, x.ctypes.data, PREDICT_BATCH, out.ctypes.data) == 0
    ckpt = workdir / "predictor.npz"
    assert api.save(handle, str(ckpt).encode()) == 0
    api.destroy(handle)
    spec = built.spec()
    predict = spec.graph.compile(outputs=spec.outputs[0])
    predict.load(ckpt)
    np.testing.assert_allclose(out, predict(x=x), rtol=BLAS_RTOL, atol=BLAS_ATOL)


# ---- issue 16: checkpoint fields validated by the C runtime as by Python; drug-compile's errors ----

SIGNATURES |= {
    "load": ([C.c_void_p, C.c_char_p], C.c_int),
    "step_count": ([C.c_void_p], C.c_int64),
    "last_error": ([C.c_void_p], C.c_char_p),
}


def _forged_checkpoint(path: Path, change: dict) -> bytes:
    """The checkpoint at `path` with arrays replaced (`change`, None removes) and its checksum
    recomputed (runtime/checkpoint.py's format), so only the field checks can refuse it."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != "meta/sha256"}
    for key, value in change.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    h = hashlib.sha256()
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
        h.update(value.tobytes())
    arrays["meta/sha256"] = np.asarray(h.hexdigest())
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


@pytest.mark.parametrize(
    "change",
    [
        {"meta/step": np.asarray(-7, np.int64)},
        {"meta/step": np.array([3, 4], np.int64)},
        {"meta/step": np.asarray(3.0)},
        {"meta/step": None},
        {"meta/sha256_extra": np.zeros(2)},
        {"junk": np.zeros(2)},
    ],
    ids=["negative", "vector", "float", "missing", "meta-extra", "unknown"],
)
def test_c_and_python_refuse_the_same_forged_checkpoint_fields(trained, workdir, change):
    """The C library loaded a checkpoint whose step was -7 (Python accepted -5 too): every field is
    checked for type, range and shape by both, and a refused load changes nothing."""
    got = trained["mlp"]
    sgemm, _ = numpy_sgemm()
    forged = workdir / "forged.npz"
    forged.write_bytes(_forged_checkpoint(got["ckpt"], change))
    api = Api(got["built"])
    handle = api.create(sgemm)
    assert api.load(handle, str(got["ckpt"]).encode()) == 0 and api.step_count(handle) == STEPS
    status = api.load(handle, str(forged).encode())
    message = api.last_error(handle).decode()
    assert status == 7, message  # DRUG_ERR_CHECKPOINT
    assert api.step_count(handle) == STEPS
    api.destroy(handle)
    spec = got["built"].spec()
    train = spec.graph.compile(loss=spec.loss, optimizer=spec.optimizer)
    with pytest.raises(GraphError):
        train.load(forged)


WRONG_BUILD_RETURNS = {
    "optimizer is a string": "dict(graph=g, loss=loss, optimizer='adam')",
    "optimizer is the factory": "dict(graph=g, loss=loss, optimizer=dg.Adam)",
    "learning rate is NaN": "dict(graph=g, loss=loss, optimizer=dg.Adam(float('nan')))",
    "learning rate is infinite": "dict(graph=g, loss=loss, optimizer=dg.SGD(float('inf')))",
    "negative learning rate": "dict(graph=g, loss=loss, optimizer=dg.SGD(-0.1))",
    "params holds a number": "dict(graph=g, loss=loss, optimizer=dg.SGD(0.1), params=[5])",
    "params names an input": "dict(graph=g, loss=loss, optimizer=dg.SGD(0.1), params=['x'])",
    "params from another graph": "dict(graph=g, loss=loss, optimizer=dg.SGD(0.1), params=[other_w])",
    "outputs is a dict": "dict(graph=g, outputs={'h': h})",
    "outputs holds a string": "dict(graph=g, outputs=[h, 'h'])",
    "loss is a number": "dict(graph=g, loss=3.0, optimizer=dg.SGD(0.1))",
    "loss is not a scalar": "dict(graph=g, loss=h, optimizer=dg.SGD(0.1))",
    "graph is a string": "dict(graph='g', outputs=[h])",
    "a list": "[g, loss]",
    "nothing": "None",
    "build raises": "1 / 0",
}


@pytest.mark.parametrize("case", list(WRONG_BUILD_RETURNS))
def test_every_wrong_build_return_gets_an_error_line(tmp_path, capsys, case):
    """optimizer='adam' ended in an AttributeError traceback from drug's own code (so did params=[5],
    and a NaN learning rate in a C compiler error); each wrong return now gets one clear line."""
    source = tmp_path / "model.py"
    source.write_text(f"""
import drug as dg

def build():
    g = dg.Graph(seed=0)
    x = g.input("x", (None, 3))
    h = x @ g.parameter("w", (3, 2))
    loss = dg.sum(h)
    other_w = dg.Graph().parameter("w", (3, 2))
    return {WRONG_BUILD_RETURNS[case]}
""")
    assert drug_compile_main([str(source), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("drug-compile: error: "), err
    if case != "build raises":
        assert "Traceback" not in err, err


def test_c_saves_keep_the_mode_and_write_through_symlinks(trained, workdir):
    """The C library's save wrote a 0600 temporary file over the old one and replaced a symbolic
    link by a file, as Python's did (issue 16)."""
    got = trained["mlp"]
    sgemm, _ = numpy_sgemm()
    api = Api(got["built"])
    handle = api.create(sgemm)
    (workdir / "real").mkdir(exist_ok=True)
    target = workdir / "real" / "c.npz"
    assert api.save(handle, str(target).encode()) == 0
    os.chmod(target, 0o640)
    link = workdir / "latest.npz"
    link.unlink(missing_ok=True)
    link.symlink_to(target)
    assert api.save(handle, str(link).encode()) == 0
    api.destroy(handle)
    assert link.is_symlink() and stat.S_IMODE(os.stat(target).st_mode) == 0o640
    assert sorted(p.name for p in (workdir / "real").iterdir()) == ["c.npz"]
    spec = got["built"].spec()
    spec.graph.compile(outputs=spec.outputs[0]).load(target)
