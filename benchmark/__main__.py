"""`python -m benchmark`: the `aabench` command (also under torchrun)."""

from benchmark.cli import main

main()
