"""The model directory's README.md says what clients receive where it differs from eager PyTorch."""
import torch

from aitune_triton.export.fallback_artifact import FallbackArtifact
from aitune_triton.spec import normalize_sample, record_spec
from aitune_triton.triton.python_model import write_python_model


class ScoresAndLabel(torch.nn.Module):
    def forward(self, x):
        return x.softmax(-1), x.argmax(-1)  # the label has only the batch axis


def _spec(model):
    samples = [normalize_sample(torch.randn(b, 3), i) for i, b in enumerate((1, 4))]
    return record_spec(model, samples, [model(*s.args) for s in samples])


def test_readme_names_each_batch_only_output(tmp_path):
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "model.export.pt2").write_bytes(b"program")
    write_python_model(version, _spec(ScoresAndLabel()), FallbackArtifact("export", "cpu", ("model.export.pt2",)), 4)
    readme = (tmp_path / "m" / "README.md").read_text()
    assert "## What clients receive" in readme
    assert "- output 'output_1' is served as dims [1] with reshape []" in readme
    assert "clients receive shape [batch, 1] where eager PyTorch returns [batch]" in readme
    assert "output_0" not in readme.split("## What clients receive")[1]


def test_readme_has_no_client_section_when_shapes_match(tmp_path):
    class Scores(torch.nn.Module):
        def forward(self, x):
            return x.softmax(-1)

    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "model.export.pt2").write_bytes(b"program")
    write_python_model(version, _spec(Scores()), FallbackArtifact("export", "cpu", ("model.export.pt2",)), 4)
    assert "What clients receive" not in (tmp_path / "m" / "README.md").read_text()
