#!/usr/bin/env bash
# README.md is generated from nbs/index.ipynb (quarto is not used here).
set -euo pipefail
cd "$(dirname "$0")/.."
jupyter nbconvert --to markdown --no-input --log-level=ERROR nbs/index.ipynb --output-dir . --output README
