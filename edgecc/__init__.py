"""edgecc: straggler-resilient coded distributed inference (AICC) for image classification."""

__version__ = "0.1.0"
