.PHONY: setup test serve gpu-test

setup:
	bash scripts/setup.sh

test: setup
	.venv/bin/python -m pytest -q

serve: setup
	.venv/bin/inflightd serve
