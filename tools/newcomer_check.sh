#!/usr/bin/env bash
# The newcomer check: build pathkit's wheel, install it into a fresh venv outside the repository, and run
# notebooks 01, 02, 03, 08 and tutorial 03 from an empty temporary folder with only PATHKIT_DATA_DIR set (and PATH/HOME).
# To stay fast, the fresh venv sees the CI venv's installed dependencies through a .pth line (their own .pth
# files, among them the CI venv's editable pathkit, are not processed), and pathkit comes from the wheel only.
# Usage: tools/newcomer_check.sh [CI_VENV]   (default .venv); needs PATHKIT_DATA_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
CI_VENV=$(cd "${1:-.venv}" && pwd)
: "${PATHKIT_DATA_DIR:?set PATHKIT_DATA_DIR to the folder holding the example data}"
TMP=$(mktemp -d /tmp/pathkit-newcomer.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

"$CI_VENV/bin/python" -m pip wheel -q --no-deps -w "$TMP/dist" "$REPO"
WHEEL=$(ls "$TMP"/dist/pathkit-*.whl)
# listed once into a variable: `unzip -l | grep -q` under pipefail fails at random (grep exits early, unzip gets SIGPIPE)
FILES=$(unzip -Z1 "$WHEEL")
grep -qx "pathkit/data/CMU-1-Small-Region.svs" <<<"$FILES" || { echo "wheel lacks the sample slide"; exit 1; }
grep -qx "pathkit/datasets/_registry.csv" <<<"$FILES" || { echo "wheel lacks the data registry"; exit 1; }

"$CI_VENV/bin/python" -m venv "$TMP/venv"
SITE=$("$TMP/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
"$CI_VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > "$SITE/ci-deps.pth"
"$TMP/venv/bin/python" -m pip install -q --no-deps --no-index "$WHEEL"
mkdir "$TMP/empty" "$TMP/out"
cp notebooks/01_quickstart.ipynb notebooks/02_slide_embeddings_longnet.ipynb notebooks/03_multimodal_cohort.ipynb \
  tutorials/03_survival_with_histology.ipynb "$TMP/out/"
# notebook 08 (spatial, the [spatial] extra) with its CI parameters, read before leaving the repository
cp notebooks/08_spatial_transcriptomics.ipynb "$TMP/out/"
P08=$("$CI_VENV/bin/python" -c "import json; print(json.dumps(json.load(open('tools/notebooks/ci_parameters.json'))['notebooks/08_spatial_transcriptomics.ipynb']))")
cd "$TMP/empty"
PK=$(env -i PATH=/usr/bin:/bin "$TMP/venv/bin/python" -c "import pathkit; print(pathkit.__file__)")
case "$PK" in "$TMP"/venv/*) ;; *) echo "pathkit imported from $PK, not from the wheel"; exit 1;; esac
run_nb() {  # notebook, parameters (YAML)
  env -i HOME="$HOME" PATH="$TMP/venv/bin:/usr/bin:/bin" PATHKIT_DATA_DIR="$PATHKIT_DATA_DIR" TQDM_DISABLE=1 \
    "$TMP/venv/bin/python" -m papermill --no-progress-bar --cwd "$TMP/empty" -y "$2" \
    "$TMP/out/$1" "$TMP/out/executed-$1" 2>&1 | grep -v "Kernel is running over TCP" || true
  test -s "$TMP/out/executed-$1" && ! grep -q '"output_type": "error"' "$TMP/out/executed-$1"
}
t0=$(date +%s)
run_nb 01_quickstart.ipynb '{"TILE_MODEL": "vit_tiny_test"}' || { echo "newcomer: notebook 01 failed"; exit 1; }
# 02 makes its tile bag from the shipped CMU-1 sample, 03 links public TCGA tables (issue 29: no untraced data)
run_nb 02_slide_embeddings_longnet.ipynb '{"TILE_MODEL": "vit_tiny_test"}' || { echo "newcomer: notebook 02 failed"; exit 1; }
run_nb 03_multimodal_cohort.ipynb '{}' || { echo "newcomer: notebook 03 failed"; exit 1; }
run_nb 03_survival_with_histology.ipynb '{}' || { echo "newcomer: tutorial 03 failed"; exit 1; }
t8=$(date +%s)
run_nb 08_spatial_transcriptomics.ipynb "$P08" || { echo "newcomer: notebook 08 failed"; exit 1; }
echo "newcomer check: notebook 08 in $(( $(date +%s) - t8 )) s"
echo "newcomer check: wheel $(basename "$WHEEL") ran notebooks 01-03, 08 and tutorial 03 from an empty folder in $(( $(date +%s) - t0 )) s"
ls "$TMP/empty"
