"""asyncio runtime: transport, worker server, master client. The encoded-only worker path never imports torch."""
