#!/usr/bin/env bash
# TensorRT's Python bindings without TensorRT: the bindings-only wheels (tensorrt_cu12_bindings, ~1.3 MB
# each, on PyPI) import once stub shared libraries stand in for the three TensorRT libraries they link.
# Nothing can be built with them (every factory returns NULL), but their enums and classes are real, so
# the tests check stdtrt's TensorRT code against TensorRT 10.x and 11.x (tests/test_tensorrt.py).
#
#   tests/tools/tensorrt_bindings.sh [DIR]     (default DIR: .tensorrt-bindings; versions: TRT_VERSIONS)
#
# Each version lands in DIR/<version>/{site,stubs}; use it with
#   PYTHONPATH=DIR/<version>/site LD_LIBRARY_PATH=DIR/<version>/stubs python -c "import tensorrt"
# A version that cannot be fetched (no registry) is skipped with one line; the tests then say why.
set -uo pipefail
DIR="${1:-.tensorrt-bindings}"
PY="${PYTHON:-python3}"
VERSIONS="${TRT_VERSIONS:-10.16.1.11 11.4.0.106}"
mkdir -p "$DIR"
for V in $VERSIONS; do
  D="$DIR/$V"
  if PYTHONPATH="$D/site" LD_LIBRARY_PATH="$D/stubs" "$PY" -c "import tensorrt" 2>/dev/null; then
    continue  # already there
  fi
  rm -rf "$D" && mkdir -p "$D/stubs" "$D/wheel"
  if ! "$PY" -m pip download -q --no-deps --disable-pip-version-check -d "$D/wheel" \
      "tensorrt_cu12_bindings==$V" >/dev/null 2>&1; then
    echo "tensorrt bindings $V: could not be downloaded; the tests that need them will say so"
    rm -rf "$D"
    continue
  fi
  "$PY" -m pip install -q --no-deps --disable-pip-version-check --target "$D/site" "$D"/wheel/*.whl
  # the wheel's module is `tensorrt_bindings`; the full TensorRT wheel provides the name `tensorrt`
  mkdir -p "$D/site/tensorrt"
  printf 'import sys\nimport tensorrt_bindings\n\nsys.modules[__name__] = tensorrt_bindings\n' \
    > "$D/site/tensorrt/__init__.py"
  M="${V%%.*}"
  cat > "$D/stubs/nvinfer.c" <<'C'
void *createInferBuilder_INTERNAL(void *l, int v) { return 0; }
void *createInferRuntime_INTERNAL(void *l, int v) { return 0; }
void *createInferRefitter_INTERNAL(void *e, void *l, int v) { return 0; }
void *getPluginRegistry(void) { return 0; }
void *getBuilderPluginRegistry(int c) { return 0; }
int getInferLibVersion(void) { return 0; }
C
  echo 'int initLibNvInferPlugins(void *l, const char *n) { return 0; }' > "$D/stubs/nvinfer_plugin.c"
  cat > "$D/stubs/nvonnxparser.c" <<'C'
void *createNvOnnxParser_INTERNAL(void *n, void *l, int v) { return 0; }
void *createNvOnnxParserRefitter_INTERNAL(void *r, void *l, int v) { return 0; }
int getNvOnnxParserVersion(void) { return 0; }
C
  for lib in nvinfer nvinfer_plugin nvonnxparser; do
    gcc -shared -fPIC -Wl,-soname,"lib$lib.so.$M" -o "$D/stubs/lib$lib.so.$M" "$D/stubs/$lib.c"
  done
  if PYTHONPATH="$D/site" LD_LIBRARY_PATH="$D/stubs" "$PY" -c "import tensorrt" 2>/dev/null; then
    echo "tensorrt bindings $V: ready in $D"
  else
    echo "tensorrt bindings $V: installed but do not import; the tests that need them will say so"
  fi
done
exit 0
