"""Datasets read through the one opener (data_prep.remote): a real HTTP server on 127.0.0.1,
``pipe:`` commands and fsspec give the same batches, resumes and errors as the local path."""

from __future__ import annotations

import http.server
import re
import shutil
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Iterator

import pytest
import torch

from data_prep import remote
from data_prep.bytes import PrepOptions, prepare
from data_prep.shards import ManifestError, ShardError, iter_documents, read_manifest
from data_prep.vocab import ByteVocab
from pretrain.config import CONFIG_DIR, load_config
from pretrain.data import build_data
from pretrain.data.shard_loader import ShardLoader, open_dataset
from tests.data_corpus import make_corpus

EOS, PAD = 258, 256
T, B = 64, 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A small byte dataset (~6 train shards) served below; tests that damage it copy it first."""
    root = tmp_path_factory.mktemp("corpus")
    make_corpus(root, n_text=24)
    out = tmp_path_factory.mktemp("served") / "ds"
    prepare([root], out, PrepOptions(shard_bytes=12_000, max_sample_bytes=4096, val_fraction=0.1),
            progress=False)
    return out


HANG_BYTES = 10_000
_released = threading.Event()  # set at teardown: handlers stop hanging


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:
        if "slow" in self.path:
            time.sleep(1.5)
        mode = self.path.split("/")[1]
        if mode in ("hang", "short"):  # /hang/ds/...: shards send HANG_BYTES, then nothing
            self.path = self.path[len(mode) + 1:]  # /short/ds/...: half a shard, then the end
            if self.path.endswith(".tar"):
                data = Path(self.translate_path(self.path)).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[:HANG_BYTES] if mode == "hang" else data[:len(data) // 2])
                self.wfile.flush()
                if mode == "hang":
                    _released.wait(10)
                self.close_connection = True
                return
        super().do_GET()


@pytest.fixture(scope="module")
def server(dataset) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` serving the parent of ``dataset`` (so the dataset is at /ds)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            partial(_Handler, directory=str(dataset.parent)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    _released.set()
    httpd.shutdown()
    httpd.server_close()


def loader(location: str, **kw) -> ShardLoader:
    args = dict(seq_len=T, micro_batch=B, seed=3, eos=EOS, pad=PAD, vocab_size=259, lanes=2)
    args.update(kw)
    return ShardLoader([open_dataset(location)], [1.0], **args)


def batches(ld: ShardLoader, n: int) -> torch.Tensor:
    return torch.cat([ld.next_batch() for _ in range(n)])


def shards_data(ld: ShardLoader) -> int:
    """Batches enough to read past every shard once."""
    return ld.plan.datasets[0].units // (B * T) + 2


def test_http_gives_the_local_batches_and_resumes_exactly(dataset, server):
    url = f"{server}/ds"
    local = loader(str(dataset))
    n = shards_data(local)
    want = batches(local, n)
    first = loader(url)
    assert first.plan.datasets[0].shards[0].path.startswith(url + "/")
    got = batches(first, 5)
    state = first.state_dict()
    assert state == loader(str(dataset)).state_dict() | {"global_index": 5 * B}  # same fingerprint
    resumed = loader(url, lanes=0)
    resumed.load_state_dict(state)
    assert torch.equal(torch.cat([got, batches(resumed, n - 5)]), want)
    # Through the config and build_data too (validation accepts a URL; val text read over HTTP).
    cfgs = [load_config(CONFIG_DIR / "debug.yaml", ["data.source=shards", f"data.datasets=[{where}]",
                                                    f"model.seq_len={T}", "data.val_bytes=1000"])
            for where in (url, dataset)]
    over_http, on_disk = (build_data(cfg, ByteVocab(), B) for cfg in cfgs)
    assert over_http.val_text == on_disk.val_text and len(on_disk.val_text) == 1000
    assert torch.equal(over_http.train.next_batch(), on_disk.train.next_batch())


def test_pipe_cat_gives_the_local_batches_and_documents(dataset):
    appended, placeholder = f"pipe:cat {dataset}", f"pipe:cat {dataset}/{{name}}"
    assert remote.join(appended, "manifest.json") == f"pipe:cat {dataset}/manifest.json"
    assert remote.join(placeholder, "manifest.json") == f"pipe:cat {dataset}/manifest.json"
    local = loader(str(dataset))
    n = shards_data(local)
    want = batches(local, n)
    assert torch.equal(batches(loader(appended), n), want)
    resumed = loader(placeholder)
    resumed.load_state_dict(loader(str(dataset)).state_dict() | {"global_index": 3 * B})
    assert torch.equal(batches(resumed, 4), want[3 * B:7 * B])
    assert list(iter_documents(placeholder, "val")) == list(iter_documents(dataset, "val"))


def test_corrupt_shard_over_http_gives_the_local_error(dataset, server, tmp_path):
    bad = dataset.parent / "bad"
    shutil.copytree(dataset, bad)
    try:
        victim = next(r["name"] for r in read_manifest(bad)["shards"] if r["split"] == "train")
        data = bytearray((bad / victim).read_bytes())
        data[1200] ^= 0xFF  # inside the first sample's payload
        (bad / victim).write_bytes(bytes(data))
        errors = {}
        for where in (str(bad), f"{server}/bad"):
            ld = loader(where, lanes=1)
            with pytest.raises(ShardError) as info:
                batches(ld, shards_data(ld))
            errors[where] = str(info.value).replace(where, "DS")
        local, http = errors.values()
        assert local == http and re.match(rf"shard DS/{victim}: sample 0 \(\w+\): crc32 mismatch", http)
        # A shard the server does not have: one line naming its URL.
        (bad / victim).unlink()
        ld = loader(f"{server}/bad", lanes=1)
        with pytest.raises(ShardError) as info:
            batches(ld, shards_data(ld))
        assert str(info.value) == f"shard {server}/bad/{victim}: HTTP 404 File not found"
    finally:
        shutil.rmtree(bad)


def test_http_errors_are_one_line_naming_the_url(dataset, server, monkeypatch):
    with pytest.raises(ManifestError) as info:
        open_dataset(f"{server}/nowhere")
    msg = str(info.value)
    assert msg.startswith(f"{server}/nowhere/manifest.json: HTTP 404") and "\n" not in msg
    monkeypatch.setattr(remote, "HTTP_TIMEOUT_S", 0.3)
    with pytest.raises(remote.RemoteError, match=rf"^{server}/slow/manifest.json: .*timed out"):
        remote.read_bytes(f"{server}/slow/manifest.json")
    with pytest.raises(remote.RemoteError, match=r"^http://127.0.0.1:9/ds/manifest.json: cannot connect"):
        remote.read_bytes("http://127.0.0.1:9/ds/manifest.json")


def test_pipe_and_object_store_errors_are_one_line(dataset, monkeypatch):
    with pytest.raises(ManifestError) as info:
        read_manifest(f"pipe:cat {dataset}/missing-dir")
    msg = str(info.value)
    assert re.match(r"pipe:.*cat .*missing-dir/manifest.json.*: command exited with status 1: .*No such file",
                    msg) and "\n" not in msg
    with pytest.raises(remote.RemoteError, match=r"^s3://bucket/ds/manifest.json: .*pip install fsspec s3fs"):
        remote.read_bytes("s3://bucket/ds/manifest.json")  # s3fs is not installed here
    monkeypatch.setitem(sys.modules, "fsspec", None)  # as if fsspec were missing
    gcs = r"^gs://b/m.json: reading gs:// needs .*: pip install fsspec gcsfs"
    with pytest.raises(remote.RemoteError, match=gcs):
        remote.read_bytes("gs://b/m.json")
    with pytest.raises(remote.RemoteError, match="not a plain file name"):
        remote.join("pipe:cat /data", "x; rm -rf y")


def test_fsspec_location_reads_like_the_local_path(dataset):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    for name in ["manifest.json"] + [r["name"] for r in read_manifest(dataset)["shards"]]:
        fs.pipe(f"/ds-mem/{name}", (dataset / name).read_bytes())
    try:
        local = loader(str(dataset))
        assert torch.equal(batches(loader("memory://ds-mem"), 6), batches(local, 6))
    finally:
        fs.rm("/ds-mem", recursive=True)


def test_verify_reads_a_dataset_over_http(dataset, server, capsys):
    from data_prep.verify import main

    assert main([f"{server}/ds", "--no-progress", "--workers", "2"]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {server}/ds: ")
    assert main([f"{server}/nowhere", "--no-progress"]) == 2
    assert f"{server}/nowhere/manifest.json: HTTP 404" in capsys.readouterr().err


def test_verify_blames_a_read_timeout_not_the_shard_and_says_what_arrived(dataset, server, capsys,
                                                                          monkeypatch):
    """A server that stops sending mid-shard: the timeout is the cause, with the bytes received;
    never "0 bytes but the manifest says ... (truncated or replaced)"."""
    from data_prep.verify import main

    monkeypatch.setattr(remote, "HTTP_TIMEOUT_S", 0.5)
    first = read_manifest(dataset)["shards"][0]
    url = f"{server}/hang/ds"
    assert main([url, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: shard {first['name']} ({url}/{first['name']}): cannot read: read timed out "
                   f"after 0.5 s ({HANG_BYTES} of {first['file_bytes']} bytes received)\n"), err
    # A body shorter than its Content-Length: the connection is named, not the shard.
    url = f"{server}/short/ds"
    assert main([url, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: shard {first['name']} ({url}/{first['name']}): cannot read: connection closed "
                   f"early ({first['file_bytes'] // 2} of {first['file_bytes']} bytes received)\n"), err


def test_a_file_url_reads_like_the_local_path(dataset):
    """file:// locations work wherever remote ones do: the loader, config validation, verify."""
    url = f"file://{dataset}"
    name = read_manifest(dataset)["shards"][0]["name"]
    assert remote.join(url, name) == f"{url}/{name}"
    assert remote.size_of(remote.join(url, name)) == (dataset / name).stat().st_size
    assert read_manifest(url) == read_manifest(dataset)
    assert list(iter_documents(url, "val")) == list(iter_documents(dataset, "val"))
    assert torch.equal(batches(loader(url), 4), batches(loader(str(dataset)), 4))
    cfg = load_config(CONFIG_DIR / "debug.yaml", ["data.source=shards", f"data.datasets=[{url}]",
                                                  f"model.seq_len={T}", "data.val_bytes=1000"])
    assert build_data(cfg, ByteVocab(), B).train.next_batch().shape == (B, T)
    with pytest.raises(ManifestError, match="no manifest.json"):
        open_dataset(f"{url}/nowhere")


def test_tokenizer_trains_on_and_tokenizes_a_dataset_over_http(dataset, server, tmp_path, capsys):
    """--dataset stays a string: the // of a URL survives, and token shards are read over HTTP."""
    import json

    from data_prep.tokenizer import main, tokenize_dataset

    url = f"{server}/ds"
    assert main(["--output", str(tmp_path / "tok"), "--dataset", url, "--vocab-size", "400",
                 "--tokens-output", str(tmp_path / "tokens"), "--workers", "1", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["trained_on"] == url and result["tokens"]["status"] == "written"
    local = tokenize_dataset(dataset, tmp_path / "tok.model", tmp_path / "local", progress=False)
    assert local["splits"] == result["tokens"]["splits"]
    over_http, on_disk = (list(iter_documents(tmp_path / d, "train")) for d in ("tokens", "local"))
    assert over_http == on_disk
