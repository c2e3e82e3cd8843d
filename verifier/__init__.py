"""The checks, with evidence: flow, lag, latency and schema conformance."""
