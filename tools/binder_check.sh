#!/usr/bin/env bash
# What Binder does, on this machine: a fresh venv built from binder/ alone (binder/runtime.txt names the Python,
# binder/requirements.txt the packages: the CPU torch first, then eelsnb with its dev tools), then every tutorial in
# nbs/tutorials executed top to bottom in that venv, as a Binder user would run them.
#
#   bash tools/binder_check.sh            # the tutorials' reduced mode (EELSNB_FAST=1, as CI runs them)
#   FULL=1 bash tools/binder_check.sh     # the tutorials' full mode (run times are written at the top of each)
#
# Exits non-zero if the install or any tutorial fails; prints one line per tutorial with its run time.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
want=$(sed -n 's/^python-\([0-9.]*\)$/\1/p' binder/runtime.txt)
py=$(command -v "python$want" || command -v python3)
have=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
[[ "$have" == "$want" ]] || echo "WARNING: binder/runtime.txt asks for Python $want, this machine runs $have" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "== fresh venv ($py, Python $have) in $work/venv, from binder/requirements.txt alone"
"$py" -m venv "$work/venv"
# shellcheck disable=SC1091
. "$work/venv/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
t0=$(date +%s)
req=binder/requirements.txt
index=$(sed -n 's/^--extra-index-url[ =]*//p' "$req" | head -1)
if [[ -n "$index" ]] && ! python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)" "$index" 2>/dev/null; then
  # an offline machine (like CI's): the same pins, without the index it cannot reach (pip would retry every package)
  echo "note: $index unreachable here; installing binder/requirements.txt without it"
  grep -v '^--extra-index-url' "$req" > "$work/requirements.txt"; req=$work/requirements.txt
fi
pip install -q -r "$req" 2>&1 | grep -v '^WARNING: Location' || true
python - <<'EOF'
import importlib.metadata as m, torch, eelsnb
assert "+cu" not in torch.__version__ and not torch.version.cuda, f"a CUDA torch was installed: {torch.__version__}"
bad = [d.metadata["Name"] for d in m.distributions() if d.metadata["Name"] and d.metadata["Name"].startswith("nvidia-")]
assert not bad, f"CUDA wheels pulled: {bad}"
print("installed: torch", torch.__version__, "| eelsnb", eelsnb.__version__,
      "| ipywidgets", m.version("ipywidgets"), "| plotly", m.version("plotly"), "| jupyterlab", m.version("jupyterlab"))
EOF
echo "== $(( $(date +%s) - t0 )) s install"
if [[ "${FULL:-0}" == "1" ]]; then unset EELSNB_FAST; mode=full; else export EELSNB_FAST=1; mode=reduced; fi
status=0
for nb in nbs/tutorials/*.ipynb; do
  s=$(date +%s)
  if (cd "$work" && jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=3600 \
        --ExecutePreprocessor.kernel_name=python3 --output-dir "$work/out" "$root/$nb" >"$work/log" 2>&1); then
    echo "ok    $nb ($mode mode) $(( $(date +%s) - s )) s"
  else
    echo "FAIL  $nb ($mode mode) $(( $(date +%s) - s )) s"; tail -20 "$work/log"; status=1
  fi
done
exit $status
