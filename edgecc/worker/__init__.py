"""The worker's side: a server that authenticates a master, takes a compute spec and computes.

Nothing here imports torch unless a compute kind that needs it is configured, so the encoded-only
worker installs numpy, msgpack, click, safetensors, threadpoolctl and uvloop only."""
