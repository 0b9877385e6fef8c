"""Model directories as ``generate`` writes them (minus the served artifact), built from tiny torch
models through the real spec/profile/mapping/render/manifest code: no export, no server, seconds.
One repository (``affine`` and ``tokens``) and one tagger directory serve every test of the package."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch

from aitune_triton.prepared import reference_cases
from aitune_triton.numerics import tolerance_for
from aitune_triton.spec import normalize_sample, record_spec
from aitune_triton.profile_set import ProfileMode
from aitune_triton.tensorrt.profiles import derive_profiles
from aitune_triton.reference_data import REFERENCE, save_reference
from aitune_triton.triton.manifest import Manifest
from aitune_triton.triton.mapping import MappingOptions, plan_model_config
from aitune_triton.triton.render import render_config
from aitune_triton.validate.checks.target import ModelTarget


class Affine(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x, ids):
        return self.lin(x).sum(1) + ids.float().sum(-1, keepdim=True)


class Tokens(torch.nn.Module):
    def forward(self, ids, mask):
        return {"hidden": (ids * mask).float().unsqueeze(-1).repeat(1, 1, 2), "flag": mask.sum(1) > 3}


class Tagger(torch.nn.Module):
    """An LSTM tagger over padded ``tokens`` with their ``lengths`` (which must not exceed the sequence)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.lstm, self.out = torch.nn.Embedding(20, 8), torch.nn.LSTM(8, 8, batch_first=True), \
            torch.nn.Linear(8, 5)

    def forward(self, tokens, lengths):
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        packed = pack_padded_sequence(self.emb(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=tokens.shape[1])
        return self.out(out)


class Bf16Mixed(torch.nn.Module):
    """A BF16 input beside an integer one (perf_analyzer's JSON has no BF16)."""

    def forward(self, x, ids):
        return x.float().sum(-1, keepdim=True) + ids.float().sum(-1, keepdim=True)


def bf16_samples():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(b, s, generator=g).to(torch.bfloat16), torch.randint(0, 9, (b, s), generator=g))
            for b, s in ((1, 4), (2, 6))]


def tagger_samples():
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(1, 20, (b, s), generator=g), torch.randint(1, s + 1, (b,), generator=g))
            for b, s in ((1, 6), (2, 15), (4, 10))]


def affine_samples():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(b, 2, 4, generator=g), torch.randint(3, 9, (b, 5), generator=g)) for b in (1, 3, 4)]


def token_samples():
    g = torch.Generator().manual_seed(0)
    return [{"ids": torch.randint(0, 100, (b, s), generator=g), "mask": torch.ones(b, s, dtype=torch.int64)}
            for b, s in ((1, 6), (2, 10), (2, 8))]


def make_model_dir(root: Path, name: str, model: torch.nn.Module, raw_samples, backend: str = "python") -> Path:
    """A model directory as generate writes it, with a placeholder for the served artifact (hashed
    in the manifest, as generate records it)."""
    samples = [normalize_sample(s, i) for i, s in enumerate(raw_samples)]
    outputs = [model(*s.args, **s.kwargs) for s in samples]
    spec = record_spec(model, samples, outputs)
    profiles = derive_profiles(spec, samples, ProfileMode.SINGLE)
    plan = plan_model_config(spec, profiles, MappingOptions(name=name, backend=backend,
                                                           max_batch_size=profiles.max_batch_size))
    model_dir = root / name
    model_dir.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(render_config(plan))
    (model_dir / "1").mkdir()
    (model_dir / "1" / "placeholder.txt").write_text("the served artifact\n")
    Manifest(name, backend, spec, profiles, profiles.max_batch_size,
             {t.name: tolerance_for(t.dtype) for t in spec.outputs}, versions={}).sealed(model_dir).save(model_dir)
    save_reference(model_dir / REFERENCE, reference_cases(spec, tuple(samples), tuple(outputs)))
    return model_dir


MODELS = {"affine": (Affine, affine_samples), "tokens": (Tokens, token_samples), "tagger": (Tagger, tagger_samples),
          "bf16": (Bf16Mixed, bf16_samples)}


@pytest.fixture(scope="session")
def model_dir_factory() -> Callable[..., Path]:
    """``(root, name, kind, backend="python")``: a model directory of one of ``MODELS``."""
    def make(root: Path, name: str, kind: str, backend: str = "python") -> Path:
        model_cls, samples = MODELS[kind]
        return make_model_dir(root, name, model_cls(), samples(), backend)
    return make


@pytest.fixture(scope="session")
def tagger_model() -> torch.nn.Module:
    return Tagger()


@pytest.fixture(scope="session")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    make_model_dir(root, "affine", Affine(), affine_samples())
    make_model_dir(root, "tokens", Tokens(), token_samples())
    return root


@pytest.fixture(scope="session")
def tagger(tmp_path_factory) -> ModelTarget:
    return ModelTarget.load(make_model_dir(tmp_path_factory.mktemp("tagger"), "tagger", Tagger(), tagger_samples()))


@pytest.fixture(scope="session")
def affine(repo) -> ModelTarget:
    return ModelTarget.load(repo / "affine")


@pytest.fixture(scope="session")
def tokens(repo) -> ModelTarget:
    return ModelTarget.load(repo / "tokens")
