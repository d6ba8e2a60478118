"""Turning IR into machine code: LLVM's O2 pipeline for the host CPU on several threads (one
module split into parts), MCJIT, and an on-disk cache of object code keyed by the program's
hash, the llvmlite version and the CPU.

The cache is an optimisation: its entries are checked against a SHA-256 kept in a file of its
own (an edited or damaged object is compiled again, never run), appear only by rename, and a
cache that cannot be read or written costs one warning per process, not a failed compile."""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import functools
import hashlib
import os
import struct
import tempfile
import threading
import warnings
from pathlib import Path

import llvmlite
import llvmlite.binding as llvm
from llvmlite.binding import ffi

from ... import compiler, core, ops
from ...core.settings import env_count
from . import forked, perfmap
from .split import split_module


@functools.cache
def _init() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()


@functools.cache
def host_cpu() -> tuple[str, str]:
    _init()
    return llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()


def target_machine(cpu: str | None = None, features: str | None = None, reloc: str = "default", opt: int = 2):
    _init()
    host_name, host_features = host_cpu()
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(
        cpu=cpu or host_name,
        features=host_features if features is None else features,
        opt=opt,
        reloc=reloc,
        codemodel="jitdefault",
    )


def pass_builder(tm):
    """LLVM's O2 pipeline with the loop and SLP vectorizers on: as fast as O3 for our loops,
    at a third of the compile time (O3 mostly adds unrolled copies). No loop unrolling: the
    vectorizer interleaves the loops that matter already, and the unroller's copies (of
    every small copy loop too) cost a third of the compile time for no measurable speed."""
    pto = llvm.create_pipeline_tuning_options(speed_level=2)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = False
    return llvm.create_pass_builder(tm, pto)


def optimize(module: llvm.ModuleRef, tm) -> None:
    pb = pass_builder(tm)
    pb.getModulePassManager().run(module, pb)


def compile_threads() -> int:
    """How many threads compile one module's parts (DRUG_COMPILE_THREADS, default: the cores, at most 4)."""
    return env_count("DRUG_COMPILE_THREADS", min(os.cpu_count() or 1, 4), minimum=1)


# A part smaller than this is not worth its own thread (a pass pipeline's fixed cost).
MIN_LINES_PER_PART = 300
# Parts per compiling thread: LLVM's time per line differs between parts (loops against table
# loads), and a thread done early takes the next part instead of waiting for the slowest.
PARTS_PER_THREAD = 2


class _Job:
    """One IR text on its way to an object file, in its own LLVM context (contexts are LLVM's
    unit of thread safety) with its own target machine and pass pipeline."""

    def __init__(self, text: str, passes: bool = True):
        self.context = llvm.create_context()
        self.module = llvm.parse_assembly(text, context=self.context)
        self.module.verify()
        # the code generator's default level for every module: its scheduling and register
        # allocation are worth a few percent on drug's convolution kernel (whose IR skips the
        # optimizer, written as it should run) and cost it no measurable compile time
        self.tm = target_machine()
        self.pb = pass_builder(self.tm)
        self.mpm = self.pb.getModulePassManager() if passes else None
        self.buffer = None
        self.error = ""

    def run(self, lib) -> None:
        """Optimize and emit object code through `lib`: llvmlite's wrapper (which holds one
        global lock per call) or, on worker threads, the same C entry points without it."""
        if self.mpm is not None:
            lib.LLVMPY_RunNewModulePassManager(self.mpm, self.module, self.pb)
        with ffi.OutputString() as error:
            self.buffer = lib.LLVMPY_TargetMachineEmitToMemory(self.tm, self.module, 1, error)
            if not self.buffer:
                self.error = str(error)

    def object_code(self) -> bytes:
        if not self.buffer:
            raise RuntimeError(f"LLVM could not emit object code: {self.error}")
        try:
            start, size = ffi.lib.LLVMPY_GetBufferStart(self.buffer), ffi.lib.LLVMPY_GetBufferSize(self.buffer)
            return ctypes.string_at(start, size)
        finally:
            ffi.lib.LLVMPY_DisposeMemoryBuffer(self.buffer)


def _unlocked_lib():
    """libllvmlite's functions without llvmlite's process-wide lock, or None if this llvmlite
    is laid out differently. Safe for our use: each job owns its context, module, target
    machine and pipeline, which is LLVM's rule for running on several threads."""
    raw = getattr(ffi.lib, "_lib", None)
    needed = ("LLVMPY_RunNewModulePassManager", "LLVMPY_TargetMachineEmitToMemory")
    return raw if raw is not None and all(hasattr(raw, n) for n in needed) else None


def emit_objects(texts: list[str], passes: bool = True, threads: int | None = None) -> list[bytes]:
    """Object code for each IR text, optimized for the host (`passes` False: code generation
    alone, at its lighter level, for IR already written as the machine should run it); several
    texts compile in parallel on up to `threads` threads (ctypes releases the GIL while LLVM works)."""
    _init()
    jobs = [_Job(text, passes) for text in texts]
    threads = min(len(jobs), threads or len(jobs))
    raw = _unlocked_lib() if threads > 1 else None
    if raw is None:
        for job in jobs:
            job.run(ffi.lib)
    else:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda job: job.run(raw), jobs))
    return [job.object_code() for job in jobs]


# drug's own kernels (gemm.py) compiled for this machine when drug is installed (`make install`
# runs `python -m drug.backends.llvm.prebuild`), so that a machine's first compile does not wait
# for them; keyed like the cache, so another CPU or another version of drug compiles its own
PREBUILT_DIR = Path(__file__).parent / "prebuilt"


def cache_enabled() -> bool:
    return os.environ.get("DRUG_CACHE", "1") != "0"


def cache_dir() -> Path:
    root = os.environ.get("DRUG_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "drug"
    )
    return Path(root)


CODE_SUFFIX = ".code"  # the cache's record of `sources_digest` for one state of the sources


@functools.cache
def code_version() -> str:
    """A hash of the code that generates kernels: this backend (codegen, every op's kernel) and
    the layers it reads (core, ops, compiler: scalar rules, traced functions, op semantics), so
    that changed code never picks up machine code cached by an older version. What the passes
    decide (kernels, buffers, op parameters) is in the program's own key; native code of a user's
    own (a kernel or scalar rule registered from outside drug) is keyed by its IR (executor.py)."""
    return sources_digest(_kernel_sources())


def sources_digest(sources: list[tuple[str, str]]) -> str:
    """SHA-256 of the (name, path) files' names and contents. The cache keeps it under their sizes,
    times and inodes (which Python trusts for its .pyc files), so that a process reads the sources
    only after they changed, not on every first compile."""
    stamps = [
        (name, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino) for name, s in ((n, os.stat(p)) for n, p in sources)
    ]
    memo = cache_dir() / f"{hashlib.sha256(repr(stamps).encode()).hexdigest()}{CODE_SUFFIX}"
    known = read_verified(memo) if cache_enabled() else None
    if known is not None and len(known) == 64:
        return known.decode()
    digest = _hash_sources(sources)
    if cache_enabled():
        write_verified(memo, digest.encode())
    return digest


def _hash_sources(sources: list[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for name, path in sources:
        data = Path(path).read_bytes()
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def _kernel_sources() -> list[tuple[str, str]]:
    """(name, path) of every Python source of core, ops, compiler and this backend, in order."""
    found = []
    for package in (core, ops, compiler, Path(__file__).parent):
        folder = str(package if isinstance(package, Path) else Path(package.__file__).parent)
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            prefix = os.path.relpath(root, os.path.dirname(folder))
            found += [(f"{prefix}/{name}", os.path.join(root, name)) for name in sorted(files) if name.endswith(".py")]
    return found


def cache_key(program_key: str) -> str:
    cpu, features = host_cpu()
    text = "|".join([program_key, llvmlite.__version__, cpu, features, code_version()])
    return hashlib.sha256(text.encode()).hexdigest()


class Compiled:
    """Machine code for one compiled function; the engine keeps it alive (calling into a freed
    engine segfaults). IR and assembly are rebuilt on demand when the code came from the cache."""

    def __init__(self, engine, address: int, build_ir, ir_text: str | None, asm_text: str | None, from_cache: bool):
        self.engine = engine
        self.address = address
        self.from_cache = from_cache
        self._build_ir = build_ir
        self._ir = ir_text
        self._asm = asm_text

    def ir(self) -> str:
        if self._ir is None:
            self._ir = self._build_ir()
        return self._ir

    def asm(self) -> str:
        if self._asm is None:  # in a context of its own: LLVM's global one never frees what it holds
            module = llvm.parse_assembly(self.ir(), context=llvm.create_context())
            tm = target_machine()
            optimize(module, tm)
            self._asm = tm.emit_assembly(module)
        return self._asm


def objects_of(ir_text: str, entry: str, passes: bool = True) -> list[bytes]:
    """Object code for a module: split into parts compiled on `compile_threads()` threads."""
    threads = compile_threads()
    parts = min(PARTS_PER_THREAD * threads if threads > 1 else 1, ir_text.count("\n") // MIN_LINES_PER_PART)
    return emit_objects(split_module(ir_text, entry, parts) or [ir_text], passes, threads)


def compile_module(
    key: str, build_ir, entry: str = "drug_step", passes: bool = True, prebuilt: bool = False, fork: bool = True
) -> Compiled:
    """Machine code for the module `build_ir()` returns (as text); it is called only on a cache
    miss, in a child process (forked.py) unless `fork` is False (a small module, whose compile
    costs less than the fork). Large modules are split into parts compiled on
    `compile_threads()` threads. `passes` False skips LLVM's optimizer (code generation only).
    `prebuilt`: the module may also come from PREBUILT_DIR (`prebuild`)."""
    _init()
    use_cache = cache_enabled()
    path = cache_dir() / f"{cache_key(key)}.o"
    objects = _read_entry(path) if use_cache else None
    if not objects and prebuilt:
        objects = _read_entry(PREBUILT_DIR / path.name)
    if objects:
        engine, address = _load(objects, entry)
        if address:  # else not ours or without the entry: compile again
            forked.catch_up()
            return Compiled(engine, address, build_ir, None, None, True)
    if fork and forked.enabled():  # IR and LLVM's work in a child process; the IR is rebuilt if asked for
        ir_text, objects = None, _unpack(forked.call(lambda: _pack(objects_of(build_ir(), entry, passes))))
    else:
        forked.catch_up()
        ir_text = build_ir()
        objects = objects_of(ir_text, entry, passes)
    if use_cache:
        write_verified(path, _pack(objects))
    engine, address = _load(objects, entry)
    if not address:
        raise RuntimeError(f"the compiled module has no function {entry}")
    return Compiled(engine, address, build_ir, ir_text, None, False)


def prebuild(key: str, build_ir, entry: str, passes: bool = True) -> Path:
    """Compile a module into PREBUILT_DIR, where `compile_module(..., prebuilt=True)` finds it
    for this machine and this version of drug; returns the file."""
    _init()
    path = PREBUILT_DIR / f"{cache_key(key)}.o"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_verified(path, _pack(objects_of(build_ir(), entry, passes)))
    for written in (path, _digest_path(path)):  # part of the installation: readable by its other users
        written.chmod(0o644)
    return path


_warned = False  # the cache's trouble is reported once per process
_warned_lock = threading.Lock()


def _warn_once(doing: str, error: OSError) -> None:
    global _warned
    with _warned_lock:
        if _warned:
            return
        _warned = True
    warnings.warn(
        f"drug: cannot {doing} the compile cache in {cache_dir()} ({error}); compiling in memory "
        "without it (set DRUG_CACHE_DIR to a writable directory, or DRUG_CACHE=0)",
        RuntimeWarning,
        stacklevel=2,
    )


def _digest_path(path: Path) -> Path:
    return path.with_suffix(".sha256")


def _entry_digest(path: Path, data: bytes) -> str:
    """The SHA-256 of an entry's bytes and its name (its key): the objects of one key copied
    under another's name fail it too."""
    return hashlib.sha256(path.stem.encode() + b"\n" + data).hexdigest()


def _read_entry(path: Path) -> list[bytes] | None:
    """The object files of a cache entry (see `read_verified`), or None."""
    data = read_verified(path)
    return _unpack(data) if data is not None else None


def read_verified(path: Path) -> bytes | None:
    """The bytes of a cache entry that match the SHA-256 stored beside them, or None (absent,
    damaged, edited, not ours, or unreadable)."""
    try:
        data = path.read_bytes()
        stored = _digest_path(path).read_text().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:  # a directory in its place, no permission, I/O error
        if isinstance(error, OSError):
            _warn_once("read", error)
        return None
    if _entry_digest(path, data) != stored:
        return None
    return data


def write_verified(path: Path, data: bytes) -> None:
    """Store an entry: its bytes, then their SHA-256 (a reader finding the object without its
    hash, or with another one, compiles again). A cache that cannot be written is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, data)
        _write_atomic(_digest_path(path), (_entry_digest(path, data) + "\n").encode())
    except OSError as error:  # read-only, full, or a file where the directory should be
        _warn_once("write", error)


def _load(objects: list[bytes], entry: str) -> tuple:
    """A JIT engine holding the linked object files and the address of `entry` (0 if absent)."""
    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), target_machine())
    for code in objects:
        engine.add_object_file(llvm.ObjectFileRef.from_data(code))
    engine.finalize_object()
    perfmap.record(objects, engine)
    return engine, engine.get_function_address(entry)


_MAGIC = b"drug-objects-1\n"


def _pack(objects: list[bytes]) -> bytes:
    sizes = struct.pack(f"<{len(objects) + 1}Q", len(objects), *map(len, objects))
    return _MAGIC + sizes + b"".join(objects)


def _unpack(data: bytes) -> list[bytes] | None:
    """The object files of a cache entry, or None if it is not one of ours (or cut short)."""
    if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 8:
        return None
    at = len(_MAGIC)
    (count,) = struct.unpack_from("<Q", data, at)
    if count > 4096 or len(data) < at + 8 * (count + 1):
        return None
    sizes = struct.unpack_from(f"<{count}Q", data, at + 8)
    at += 8 * (count + 1)
    if at + sum(sizes) != len(data):
        return None
    objects = []
    for size in sizes:
        objects.append(data[at : at + size])
        at += size
    return objects


def _write_atomic(path: Path, data: bytes) -> None:
    """`path` holds `data` or what it held before, never a part: a private temporary file renamed
    over it (removed if anything fails). No fsync: a torn file after a crash fails its hash."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
