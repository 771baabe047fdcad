#!/usr/bin/env bash
# What a new user gets from plain `pip install .` (no extras, no system library), in a fresh virtual
# environment: the recipes are listed, SimCLR pretrains 3 steps on a folder of images, and a feature that
# needs an extra (rendering shapes3d: the 3d extra, open3d) stops with the install line and exit status 2.
# Run by .ci/run after `make test`; about 3 minutes, most of it installing torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)

"$PYTHON" -m venv "$work/venv"
bin="$work/venv/bin"
"$bin/python" -m pip install -q --upgrade pip
"$bin/python" -m pip install -q -c constraints.txt .
echo "fresh install: plain pip install . took $(( $(date +%s) - start )) s"

# No extra came along, and nothing installed links the system library open3d needs (libusb-1.0).
"$bin/python" - <<'PY'
import importlib.util
extras = ["open3d", "submitit", "onnx", "onnxruntime", "pycocotools", "wandb", "mlflow", "sklearn", "umap"]
present = [name for name in extras if importlib.util.find_spec(name) is not None]
assert not present, f"plain pip install . brought optional packages: {present}"
PY
if grep -rlq --include='*.so*' 'libusb-1.0' "$work/venv/lib"; then
  echo "fresh install: a library in the environment links libusb-1.0" >&2; exit 1
fi

cd "$work"  # away from the source tree: the installed package, its packaged recipes
"$bin/equissl" --version
"$bin/equissl" list recipes | tee recipes.txt
grep -q '^simclr_resnet18_shapes3d ' recipes.txt

# A folder of the user's own photos: nested, unlabelled, JPEG and PNG of mixed sizes and modes.
"$bin/python" - "$work/photos" <<'PY'
import sys
from pathlib import Path
from PIL import Image
root = Path(sys.argv[1])
for k in range(12):
    folder = root / ("2024" if k % 2 else "2025/trip")
    folder.mkdir(parents=True, exist_ok=True)
    mode, colour = ("L", 40 + 15 * k) if k % 3 == 0 else ("RGB", (20 * k, 255 - 20 * k, 90))
    image = Image.new(mode, (48 + 7 * k, 40 + 3 * (k % 4)), colour)
    image.save(folder / (f"{k}.png" if k % 2 else f"{k}.jpg"))
PY
"$bin/equissl" pretrain --config simclr_resnet18_shapes3d \
  "data={name: imagefolder, root: $work/photos, image_size: 32, num_workers: 0}" \
  augment.crop_size=32 backbone.stem=strided trainer.max_steps=3 trainer.batch_size=8 \
  trainer.precision=fp32 trainer.progress=false "trainer.run_dir=$work/run" | tee pretrain.txt
grep -q "finished: $work/run at step 3" pretrain.txt
test -f "$work/run/checkpoints/step-00000003/COMPLETE"

# Without the 3d extra, rendering shapes3d names the extra to install and exits 2, leaving nothing behind.
set +e
"$bin/equissl" data make shapes3d "data.root=$work/shapes3d" 2> make.err
status=$?
set -e
cat make.err
test "$status" -eq 2
grep -q "pip install 'equissl\[3d\]'" make.err
test "$(wc -l < make.err)" -eq 1
test ! -e "$work/shapes3d"
echo "fresh install: every check passed in $(( $(date +%s) - start )) s"
