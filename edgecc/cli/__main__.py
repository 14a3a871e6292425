"""`python -m edgecc.cli`: how local workers are started (launch/local.py)."""

from . import main

main()
