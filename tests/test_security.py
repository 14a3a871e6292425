"""Security surface: TLS with certificates made in the test, secrets kept out of argv and logs,
no pickle anywhere, model files validated before use."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import numpy as np
import pytest

from edgecc.data import load_sample
from edgecc.errors import EdgeccError
from edgecc.modelfile import load_model
from edgecc.protocol.messages import PROTOCOL_VERSION
from edgecc.master.master import Master
from edgecc.master.stream import run_stream
from edgecc.schemes.aicc import CodedPlan
from edgecc.master.probe import probe
from edgecc.comm.tcp import client_ssl_context

from .conftest import TOKEN

trustme = pytest.importorskip("trustme")
PKG = Path(__file__).resolve().parent.parent / "edgecc"


@pytest.fixture
def tls_files(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "worker.pem", "key": tmp_path / "worker.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    other = trustme.CA()  # a CA the workers' certificates do not chain to
    other.cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    paths["other_ca"] = tmp_path / "other-ca.pem"
    return paths


async def test_tls_workers_serve_a_master_that_trusts_their_ca(tiny_models, spawn_workers, tls_files):
    workers = spawn_workers(3, extra=["--tls-cert", str(tls_files["cert"]), "--tls-key", str(tls_files["key"])])
    model, info = load_model(tiny_models["hb"])
    plan = CodedPlan(model, info, 3)
    images, labels = load_sample()
    m = Master(plan, [w.address for w in workers], TOKEN.encode(), ssl_context=client_ssl_context(str(tls_files["ca"])))
    try:
        await m.start(wait_ready=20)
        summary, preds = await run_stream(m, images[:100], labels[:100], groups_per_request=10)
    finally:
        await m.close()
    assert summary["requests_failed"] == 0 and (preds >= 0).all()


async def test_tls_worker_refuses_plaintext_and_untrusted_masters(spawn_workers, tls_files):
    w = spawn_workers(1, extra=["--tls-cert", str(tls_files["cert"]), "--tls-key", str(tls_files["key"])])[0]
    with pytest.raises((EdgeccError, asyncio.TimeoutError)):
        await probe(w.address, TOKEN.encode(), timeout=2.0)  # plaintext client against a TLS server
    with pytest.raises(EdgeccError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        await probe(w.address, TOKEN.encode(), timeout=5.0, ssl_context=client_ssl_context(str(tls_files["other_ca"])))
    ok = await probe(w.address, TOKEN.encode(), timeout=5.0, ssl_context=client_ssl_context(str(tls_files["ca"])))
    assert ok["proto"] == PROTOCOL_VERSION


def test_no_module_unpickles_or_evaluates_received_data():
    """Static check over the package: no pickle/marshal/shelve, no eval/exec, torch.load only with weights_only=True."""
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                assert not {"pickle", "cPickle", "marshal", "shelve", "dill"} & set(names), path
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                assert not (isinstance(f, ast.Name) and name in ("eval", "exec")), f"{path}:{node.lineno}"
                if name == "load" and isinstance(f, ast.Attribute) and getattr(f.value, "id", "") == "torch":
                    kw = {k.arg: k.value for k in node.keywords}
                    assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, f"{path}:{node.lineno}"
                if name == "load" and isinstance(f, ast.Attribute) and getattr(f.value, "id", "") == "np":
                    kw = {k.arg: k.value for k in node.keywords}
                    assert isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is False, f"{path}:{node.lineno}"


def test_token_is_never_on_the_command_line():
    from click.testing import CliRunner

    from edgecc.cli import main

    for cmd in ("worker", "master", "ping"):
        out = CliRunner().invoke(main, [cmd, "--help"]).output
        assert "--token " not in out and "--token=" not in out, cmd


def test_a_model_file_with_nan_weights_is_refused_before_use(tmp_path, tiny_models):
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    from edgecc.errors import ModelFileError

    arrays = load_file(str(tiny_models["hb"]))
    with safe_open(str(tiny_models["hb"]), framework="numpy") as f:
        meta = f.metadata()
    name = sorted(arrays)[0]
    arrays[name] = np.full_like(arrays[name], np.inf)
    save_file(arrays, str(tmp_path / "inf.safetensors"), metadata=meta)
    with pytest.raises(ModelFileError, match="NaN or Inf"):
        load_model(tmp_path / "inf.safetensors")
