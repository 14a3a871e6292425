"""Options and helpers more than one group of commands uses."""

from __future__ import annotations

import click

from ..protocol.images import PAPER_IMAGE

ARCH = click.Choice(["mlp", "cnn", "cl"])
RECIPES = ("paper", "best", "augment", "anneal")  # edgecc.train.RECIPES, spelled out so the CLI starts without torch
WEIGHT_INITS = ("default", "variance")  # edgecc.train.WEIGHT_INITS, likewise
PRECISION = click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto", show_default=True,
                         help="training arithmetic: auto = bf16 autocast where the device runs bf16 natively, else fp32")
COMPILE = click.option("--compile", "compile_steps", is_flag=True,
                       help="torch.compile the training steps: the same losses, 1.06-1.55x faster per step on one CPU thread "
                       "(benchmarks/train_compile.py) after a compile of 5-20 s (needs a C++ compiler); a run may "
                       "resume with or without it")


def arch_family(name: str) -> str:
    return "cl" if name in ("cnn", "cl") else "mlp"


def images_from(source: str, data_dir: str | None, limit: int | None, image=PAPER_IMAGE):
    """The test split of `source`, (n, *dims(image)) uint8 and labels, checked against the (C, H, W) `image`."""
    from ..datasets import load_arrays

    images, labels = load_arrays(source, "test", data_dir, tuple(image))
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


class SchemeName(click.ParamType):
    """A registered scheme's name (schemes/registry.py), or one of `extra`. The names are read when a
    value is checked or help is shown, so starting the CLI scans no entry points."""

    name = "scheme"

    def __init__(self, *extra: str):
        self.extra = extra

    def _names(self) -> tuple[str, ...]:
        from ..schemes.registry import names

        return (*self.extra, *names())

    def get_metavar(self, param, ctx=None) -> str:
        return "[" + "|".join(self._names()) + "]"

    def convert(self, value, param, ctx):
        known = self._names()
        if value not in known:
            self.fail(f"unknown scheme {value!r}; the schemes are {', '.join(known)}", param, ctx)
        return value


# The options several schemes declare, as flags of their own (passed on only when given, so a scheme
# that does not declare one refuses it by name); any other option of any scheme: --option NAME=VALUE.
SCHEME_FLAGS = ("model", "placement", "wire_dtype", "encode_precision", "byzantine", "tolerance", "points")


def scheme_options(f):
    """--k, --option and the SCHEME_FLAGS, for commands that build a plan (schemes.registry.build_plan)."""
    for opt in reversed([
        click.option("--k", "k", type=int, default=None,
                     help="images per group [default: the K the scheme's model fixes, else 2]"),
        click.option("--model", default=None, help="the scheme's model: a shipped name ('default': the AICC "
                     "model, 'default-mlp', 'learned-code') or a model file [default: the scheme's]"),
        click.option("--placement", default=None, help="aicc: encoded (the master encodes) or shared (workers hold "
                     "the encoder) [default: encoded]"),
        click.option("--wire-dtype", default=None, help="f4 or f2: results (and inputs) on the wire [default: f4]"),
        click.option("--encode-precision", default=None, help="aicc: the master's encoder, auto, fp32 or bf16; auto = "
                     "bf16 for CNN encoders on CPUs with native bf16 [default: auto]"),
        click.option("--byzantine", type=int, default=None, help="aicc, approxifer: E, decode around up to E lying "
                     "workers and name them [default: 0]"),
        click.option("--tolerance", type=float, default=None, help="aicc: the decoded-logit error bound a request may "
                     "decode with; requests wait for better-conditioned results until it holds, and a configuration "
                     "that cannot reach it is refused at start [default: 0.01]"),
        click.option("--points", default=None, help="aicc: chosen or uniform evaluation points; approxifer: worker "
                     "nodes n (cos(iπ/N)) or n-1 (cos(iπ/(N−1)))"),
        click.option("--option", "-o", "extra_options", multiple=True, metavar="NAME=VALUE",
                     help="any option of the scheme (`edgecc schemes` lists each scheme's); repeatable"),
    ]):
        f = opt(f)
    return f


def collect_scheme_options(extra_options: tuple[str, ...], **flags) -> dict[str, object]:
    """{option: value} from the SCHEME_FLAGS given and --option NAME=VALUE (an option given twice is an error)."""
    out = {k: v for k, v in flags.items() if v is not None}
    for item in extra_options:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise click.UsageError(f"--option takes NAME=VALUE, got {item!r}")
        if name in out:
            raise click.UsageError(f"option {name} is given twice")
        out[name] = value
    return out
