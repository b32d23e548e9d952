#!/usr/bin/env bash
# Fills .whl/ with the wheels that benchmarks/gpu.sh needs on a GPU machine that cannot reach PyPI but has jax
# (CUDA), flax, optax, orbax-checkpoint, numpy, scipy, absl-py, etils, pyyaml, protobuf and pytest installed (as the
# workplace's H200 image does): grain and its array-record, portpicker and zstandard, and ml-collections. Run it
# where PyPI is reachable; then carry .whl to the GPU machine, where gpu.sh installs them into /tmp (no network,
# nothing of the image replaced) and runs from the checkout (PYTHONPATH), without `pip install -e .`.
# Usage: bash benchmarks/gpu_wheels.sh [PYTHON_VERSION]   (default 3.12, the GPU image's; about 10 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
py_version=${1:-3.12}
py=${PYTHON:-$(command -v python3 || command -v python)}
# The versions this checkout is tested with (the local environment's), else the newest the ranges of setup.py allow.
specs=$("$py" - <<'PY'
from importlib import metadata
ranges = {"grain": ">=0.2.16,<0.3", "array-record": ">=0.8,<0.9", "ml-collections": ">=1.0,<2",
          "portpicker": ">=1.6,<2", "zstandard": ">=0.22,<1"}
for name, spec in ranges.items():
  try:
    print(f"{name}=={metadata.version(name)}")
  except metadata.PackageNotFoundError:
    print(f"{name}{spec}")
PY
)
rm -rf .whl && mkdir -p .whl
for spec in $specs; do
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$py_version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$spec"
done
if [ -d .git ] && ! grep -qx '/.whl/' .git/info/exclude 2>/dev/null; then
  echo '/.whl/' >> .git/info/exclude      # never committed: platform-specific binaries
fi
ls .whl
echo "gpu_wheels.sh: $(du -sh .whl | cut -f1) in .whl for CPython $py_version"
