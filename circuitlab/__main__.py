"""`python -m circuitlab` is the `circuitlab` command."""

from circuitlab.cli import main

main()
