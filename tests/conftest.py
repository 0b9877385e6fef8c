"""Shared fixtures. Live fixtures skip (not fail) where the embedded Triton stack is absent."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest


def pytest_configure(config):
    """A test run started as a background job of a non-interactive shell (``make test &``) inherits
    SIGINT ignored, and so would every child it starts: the tests that Ctrl-C a child (``serve``, a
    killed ``generate``) would then wait on a child that never stops. The children get the default back."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def user_cache_in_tmp(tmp_path_factory):
    """generate remembers AOTInductor load crashes under ``$XDG_CACHE_HOME/aitune-triton``: the tests
    (and the children and servers they start) use a session tmp dir, never the real home's cache."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield Path(os.environ["XDG_CACHE_HOME"])
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


def triton_stack_missing() -> str | None:
    """Why live tests cannot run here, or None."""
    from aitune_triton.triton import tools

    try:
        tools.bundled_tritonserver()
    except tools.ToolMissing as exc:
        return str(exc)
    if not tools.bundled_stub().exists():
        return "no Python-backend stub for Python %s" % tools.python_version()
    return None


@pytest.fixture(scope="session")
def triton_server_factory(tmp_path_factory):
    """``start(repo, **ServerOptions fields) -> TritonServer`` (started); all stopped at session end.

    Each server logs to its own file under pytest's tmp dir so a failure's log survives the run.
    """
    reason = triton_stack_missing()
    if reason:
        pytest.skip(reason)
    from aitune_triton.triton.launch import ServerOptions
    from aitune_triton.triton.server import TritonServer

    started: list[TritonServer] = []

    def start(repo: Path, **options) -> TritonServer:
        log_path = tmp_path_factory.mktemp("triton-log") / "tritonserver.log"
        server = TritonServer(repo, ServerOptions(**options), log_path=log_path)
        started.append(server)
        return server.start()

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """``host:port`` of an S3 server on 127.0.0.1 with test credentials in the environment.

    moto's standalone server (``moto[server]``) stands in for a production S3 server such as MinIO
    or Ceph, none of which installs from the package registries here; it speaks the S3 REST API
    that boto3 and tritonserver's S3 client use. It is started on a free loopback port and
    stopped at session end.
    """
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    from aitune_triton.procs import die_with_this_process
    from aitune_triton.triton.launch import free_port

    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto_server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=die_with_this_process())  # no leaked server if the test run is killed
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="aitune-test-key", AWS_SECRET_ACCESS_KEY="aitune-test-secret-0f3c9",
                      AWS_DEFAULT_REGION="us-east-1")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                opener.open("http://127.0.0.1:%d/" % port, timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("moto_server did not start on port %d (log: %s)" % (port, log.name))
                time.sleep(0.2)
        yield "127.0.0.1:%d" % port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def remount():
    """``remount(path, "ro")`` bind-mounts ``path`` read-only onto itself; ``remount(path, "full")``
    mounts a 64 KiB tmpfs on it: the real faults (EROFS, ENOSPC) a user meets, where a mock would
    only restate the code. Skips where mounting is not allowed (not root); unmounted afterwards."""
    import subprocess

    mounted: list[Path] = []

    def mount(path: Path, kind: str) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        steps = ([["mount", "--bind", str(path), str(path)], ["mount", "-o", "remount,ro,bind", str(path)]]
                 if kind == "ro" else [["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)]])
        for i, cmd in enumerate(steps):
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if i == 0 and proc.returncode == 0:
                mounted.append(path)
            if proc.returncode != 0:
                pytest.skip("cannot mount here (%s): %s" % (" ".join(cmd[:2]), proc.stderr.strip()))
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


SENTENCES = ["the quick brown fox jumps over the lazy dog", "a tiny model for tests", "hello world",
             "serving models with triton"]


def _save_tokenizer(directory: Path) -> None:
    """A word-level tokenizer trained on a few sentences, saved the way a checkpoint ships one."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=special))
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(directory)


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny random-init Hugging Face checkpoints saved with ``save_pretrained`` (no download): BERT
    classification and BERT embedding (with a tokenizer), ViT classification, GPT-2 (use_cache=False,
    no tokenizer: the samples are random ids)."""
    import torch
    from transformers import (BertConfig, BertForSequenceClassification, BertModel, GPT2Config, GPT2LMHeadModel,
                              ViTConfig, ViTForImageClassification)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    bert = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=64)
    paths = {name: root / name for name in ("bert_cls", "bert_emb", "vit", "gpt2")}
    BertForSequenceClassification(BertConfig(num_labels=3, **bert)).save_pretrained(paths["bert_cls"])
    BertModel(BertConfig(**bert)).save_pretrained(paths["bert_emb"])
    for name in ("bert_cls", "bert_emb"):
        _save_tokenizer(paths[name])
    ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=64, num_labels=5)
                              ).save_pretrained(paths["vit"])
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=2, use_cache=False,
                               bos_token_id=0, eos_token_id=0)).save_pretrained(paths["gpt2"])
    return paths
