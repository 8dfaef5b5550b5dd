"""`python -m aabench.cli`: the same as `python -m aabench`."""

from aabench.cli import main

main()
