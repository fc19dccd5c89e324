# The commands the README gives. Each target does its own (idempotent) set-up first.
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: help setup test demo bench lint

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' Makefile | sed 's/:.*## /\t/'

setup:  ## virtual environment + requirements + ffmpeg (fast when done)
	@bash tools/setup.sh

test: setup  ## run the test suite (offline, CPU)
	$(PY) -m pytest

demo: setup  ## the whole pipeline offline on a generated sample dataset (DEMO_ARGS=--fresh to redo)
	$(PY) -m animalvae.demo $(DEMO_ARGS)

bench: setup  ## run every benchmark and rewrite docs/benchmarks.md
	$(PY) bench/run_all.py

lint: setup  ## ruff
	$(PY) -m ruff check .
