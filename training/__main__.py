"""``python -m lsq.training``: the argparse entry point (the GPU machine may lack click)."""

from lsq.training.cli import main

main()
