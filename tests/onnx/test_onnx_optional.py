"""The onnx extra is optional: drug never imports it, and drug.onnx says which extra it needs."""

from __future__ import annotations

import subprocess
import sys


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_drug_loads_no_onnx():
    done = run("import sys, drug; print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime')))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_drug_onnx_without_the_extra_names_it():
    """With the onnx package unimportable (None in sys.modules), `import drug.onnx` explains."""
    done = run("import sys; sys.modules['onnx'] = None; import drug.onnx")
    assert done.returncode != 0
    assert "drug.onnx needs the 'onnx' extra: pip install 'drug[onnx]'" in done.stderr


def test_drug_compile_of_an_onnx_file_without_the_extra_names_it(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    code = (
        "import sys; sys.modules['onnx'] = None; from drug.aot.cli import main; "
        f"sys.exit(main([{str(model)!r}, '--out', {str(tmp_path / 'out')!r}]))"
    )
    done = run(code)
    assert done.returncode == 1
    assert "compiling ONNX models needs the 'onnx' extra" in done.stderr
