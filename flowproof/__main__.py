"""`python -m flowproof`, the same as the `flowproof` console script."""

from __future__ import annotations

from flowproof.cli import main

main()
