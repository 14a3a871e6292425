"""`python -m edgecc.cli`: how local workers are started (runtime/local.py)."""

from . import main

main()
