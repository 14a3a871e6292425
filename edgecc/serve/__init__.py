"""`edgecc serve`: the master behind an HTTP endpoint, with dynamic grouping, metrics and a dashboard."""
