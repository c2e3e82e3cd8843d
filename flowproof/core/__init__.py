"""flowproof's core: settings, logging, errors, metrics, connections, retry, SQL rendering.

The bottom layer: it imports no other flowproof package (tests/test_layers.py).
"""
