"""`python -m aabench`: the `aabench` command (also under torchrun)."""

from aabench.cli import main

main()
