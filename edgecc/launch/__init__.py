"""Workers started by this process: as local processes (scenarios, benchmarks, tests) or in this process."""
