"""`python -m fl_sim.cli`: the same entry point as the `fl-sim` script."""

from fl_sim.cli import main

main()
