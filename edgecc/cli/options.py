"""Options and helpers more than one group of commands uses."""

from __future__ import annotations

import click

ARCH = click.Choice(["mlp", "cnn", "cl"])
RECIPES = ("paper", "best", "augment", "anneal")  # edgecc.train.RECIPES, spelled out so the CLI starts without torch
PRECISION = click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto", show_default=True,
                         help="training arithmetic: auto = bf16 autocast where the device runs bf16 natively, else fp32")


def arch_family(name: str) -> str:
    return "cl" if name in ("cnn", "cl") else "mlp"


def images_from(source: str, data_dir: str | None, limit: int | None):
    from ..data import load_images

    images, labels = load_images(source, data_dir)
    return (images[:limit], labels[:limit]) if limit else (images, labels)


def make_limits(max_frame, max_batch, max_in_flight, handshake_timeout, idle_timeout):
    from ..protocol.limits import Limits

    return Limits(max_frame=max_frame, max_batch=max_batch, max_in_flight=max_in_flight,
                  handshake_timeout=handshake_timeout, idle_timeout=idle_timeout)


def limit_options(f):
    from ..protocol.limits import Limits

    d = Limits()
    for opt in reversed([
        click.option("--max-frame", type=int, default=d.max_frame, show_default=True, help="bytes per frame"),
        click.option("--max-batch", type=int, default=d.max_batch, show_default=True, help="groups per request"),
        click.option("--max-in-flight", type=int, default=d.max_in_flight, show_default=True),
        click.option("--handshake-timeout", type=float, default=d.handshake_timeout, show_default=True),
        click.option("--idle-timeout", type=float, default=d.idle_timeout, show_default=True),
    ]):
        f = opt(f)
    return f


def setup_logging(level: str) -> None:
    import logging

    logging.basicConfig(level=getattr(logging, level.upper()), format="%(asctime)s %(name)s %(levelname)s %(message)s")


def stop_on_sigterm_as_on_ctrl_c() -> None:
    """Make SIGTERM end this process the way Ctrl-C does, so its finally blocks run (workers stopped,
    link namespaces removed). Not `signal.default_int_handler`: that raises KeyboardInterrupt wherever
    the interpreter is, and inside an event loop's transport callback the loop reports a fatal
    transport error with a traceback. Forwarding to the current SIGINT handler instead lets a running
    asyncio.Runner cancel its main task cleanly; outside a loop that handler raises KeyboardInterrupt.
    A process started in the background by a non-interactive shell has SIGINT ignored (so asyncio
    installs no handler): there SIGTERM raises KeyboardInterrupt directly, which still unwinds."""
    import signal

    def forward(signum, frame) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:  # SIGINT ignored or left to the OS: still stop
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, forward)
