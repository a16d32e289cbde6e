"""TensorRT 10 and 11 without a GPU: the precision -> network flags decision as a pure function, checked
against the real enums of both versions' Python bindings (the bindings-only wheels, imported over stub
libraries by tests/tools/tensorrt_bindings.sh, which `make test` runs), and every TensorRT API stdtrt calls
checked to exist in both, so that no weak-typing call (BuilderFlag.FP16, removed in 11) can come back."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stdtrt.errors import StdtrtError
from stdtrt.export.tensorrt import network_plan

ROOT = Path(__file__).resolve().parents[1]
BINDINGS = ROOT / ".tensorrt-bindings"
VERSIONS = ("10.16.1.11", "11.4.0.106")
SOURCES = ("stdtrt/export/tensorrt.py", "stdtrt/runtime/backends/tensorrt.py", "stdtrt/availability.py")


class Flags10:  # TensorRT 10.x's NetworkDefinitionCreationFlag values
    EXPLICIT_BATCH, STRONGLY_TYPED = 0, 1


class Flags11:  # TensorRT 11.x: EXPLICIT_BATCH is gone, STRONGLY_TYPED is deprecated and ignored
    STRONGLY_TYPED = 0


class Flags8:  # before strong typing
    EXPLICIT_BATCH = 0


def test_network_plan_is_strongly_typed_on_10_and_11():
    assert network_plan("10.16.1.11", Flags10).creation_flags == 0b10  # the STRONGLY_TYPED bit, not bit 0
    assert network_plan("11.4.0.106", Flags11).creation_flags == 0  # always strongly typed: no flag
    assert not network_plan("10.3.0", Flags10).tf32 and not network_plan("11.0", Flags11).tf32
    with pytest.raises(StdtrtError, match="cannot build strongly typed networks"):
        network_plan("8.6.1", Flags8)


def _with_bindings(version: str, code: str) -> dict:
    """Run `code` (which prints one JSON line) with TensorRT `version`'s bindings importable."""
    folder = BINDINGS / version
    if not (folder / "site").is_dir():
        pytest.skip(
            f"TensorRT {version} bindings are not in {BINDINGS} (run tests/tools/tensorrt_bindings.sh)"
        )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(folder / "site"), str(ROOT)]),
        "LD_LIBRARY_PATH": str(folder / "stubs"),
    }
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("version", VERSIONS)
def test_network_plan_against_the_real_enums(version):
    code = """
import json, tensorrt as trt
from stdtrt.export.tensorrt import network_plan
F = trt.NetworkDefinitionCreationFlag
plan = network_plan(trt.__version__, F)
print(json.dumps({"version": trt.__version__, "flags": plan.creation_flags,
                  "strongly_typed": int(F.STRONGLY_TYPED),
                  "explicit_batch": int(F.EXPLICIT_BATCH) if hasattr(F, "EXPLICIT_BATCH") else None,
                  "fp16_flag": hasattr(trt.BuilderFlag, "FP16")}))
"""
    got = _with_bindings(version, code)
    assert got["version"] == version
    if version.startswith("10."):
        assert got["flags"] == 1 << got["strongly_typed"] and got["flags"] != 1 << got["explicit_batch"]
        assert got["fp16_flag"]  # still there in 10.x (deprecated): stdtrt must not need it
    else:
        assert got["flags"] == 0 and got["explicit_batch"] is None and not got["fp16_flag"]


def _api_used() -> list[str]:
    """Every `trt.X[.Y]` and every method stdtrt calls on a TensorRT object, as dotted class paths."""
    objects = {"builder": "Builder", "config": "IBuilderConfig", "parser": "OnnxParser",
               "network": "INetworkDefinition", "runtime": "Runtime", "engine": "ICudaEngine",
               "context": "IExecutionContext"}  # fmt: skip
    names = set()
    for source in SOURCES:
        text = (ROOT / source).read_text()
        if "import tensorrt as trt" not in text:
            continue
        names |= {
            ".".join(filter(None, m)) for m in re.findall(r"\btrt\.([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?", text)
        }
        for var, attr in re.findall(
            r"(?:\bself\.|(?<![\w.]))(builder|config|parser|network|runtime|engine|context)\.(\w+)", text
        ):
            names.add(f"{objects[var]}.{attr}")
    return sorted(names)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_tensorrt_api_stdtrt_calls_exists(version):
    used = _api_used()
    assert (
        "BuilderFlag.TF32" in used
        and "Builder.create_network" in used
        and "IExecutionContext.execute_async_v3" in used
    )
    code = f"""
import json, tensorrt as trt
missing = []
for name in {used!r}:
    obj = trt
    for part in name.split("."):
        if not hasattr(obj, part):
            missing.append(name)
            break
        obj = getattr(obj, part)
print(json.dumps({{"missing": missing}}))
"""
    assert _with_bindings(version, code)["missing"] == []


def test_the_tensorrt_extra_names_the_supported_versions():
    from stdtrt.availability import TENSORRT_MAJORS, tensorrt_version_problem

    extra = re.search(r'tensorrt = \["tensorrt([^"]*)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert extra == f">={TENSORRT_MAJORS[0]}.0,<{TENSORRT_MAJORS[-1] + 1}"
    assert tensorrt_version_problem("10.16.1") is None and tensorrt_version_problem("11.4.0") is None
    assert "too old" in tensorrt_version_problem("8.6.1")
    assert "newer than" in tensorrt_version_problem("12.0.0")
