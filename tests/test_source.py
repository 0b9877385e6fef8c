"""Loading model.py: the one-line refusals that say how to fix what the tool cannot serve."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from aitune_triton.errors import UserError
from aitune_triton.source import load_model_source

ZOO = Path(__file__).resolve().parent / "zoo"


def test_list_of_tensors_argument_is_refused_with_a_hint_to_wrap_the_model(tmp_path):
    """A torchvision-style detector takes ``images: list[Tensor]``; Triton sends tensors."""
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent("""
        import torch
        class Detector(torch.nn.Module):
            def forward(self, images):
                return torch.stack([i.mean() for i in images])
        def get_model():
            return Detector()
        def get_samples():
            return [([torch.randn(3, 8, 8), torch.randn(3, 8, 8)],)]
    """))
    with pytest.raises(UserError, match=r"argument 0 is a list, not a tensor; .*; forward\(\) takes a list/dict of "
                                        r"tensors: wrap the model in an nn.Module whose forward takes tensors") as info:
        load_model_source(path)
    assert "\n" not in str(info.value)


def test_plain_non_tensor_sample_gets_no_wrap_hint(tmp_path):
    path = tmp_path / "model.py"
    path.write_text("import torch\ndef get_model():\n    return torch.nn.Linear(2, 2)\n"
                    "def get_samples():\n    return [[1.0, 2.0]]\n")
    with pytest.raises(UserError, match="argument 0 is a float, not a tensor") as info:
        load_model_source(path)
    assert "wrap the model" not in str(info.value)


def test_generation_cache_output_is_refused_with_use_cache_false(monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"gpt2_cache.py: forward\(\) returns a DynamicCache \(a generation cache, "
                                        r"past_key_values\), which cannot be served; set use_cache=False in "
                                        r"get_model\(\)"):
        load_model_source(ZOO / "gpt2_cache.py")


def test_plain_list_sample_unpacked_into_arguments_says_in_forward_and_how_to_pass_images(tmp_path):
    """A sample written as a plain list is a list of positional arguments: a one-argument detector
    fails inside forward (not "at import"), and the message says how to pass the images as one."""
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent("""
        import torch
        class Detector(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 4, 1)
            def forward(self, images):
                return self.conv(images)
        def get_model():
            return Detector()
        def get_samples():
            return [[torch.randn(3, 8, 8), torch.randn(3, 8, 8)]]
    """))
    with pytest.raises(UserError, match=r"forward\(\) raised on sample 0 in forward: TypeError: .*; the sample is a "
                                        r"plain list of 2 tensors, passed as 2 positional arguments, but forward\(\) "
                                        r"takes 1 \(images\): for a list of images as one argument, give them as one "
                                        r"batched tensor \(torch.stack\(images\)") as info:
        load_model_source(path)
    assert "\n" not in str(info.value) and "import" not in str(info.value)


def test_forward_raising_in_the_users_code_names_its_line(tmp_path):
    path = tmp_path / "model.py"
    path.write_text("import torch\nclass M(torch.nn.Module):\n    def forward(self, x):\n"
                    "        raise ValueError('no')\ndef get_model():\n    return M()\n"
                    "def get_samples():\n    return [torch.ones(1)]\n")
    with pytest.raises(UserError, match=r"forward\(\) raised on sample 0 in forward at line 4: ValueError: no$"):
        load_model_source(path)


def test_one_dict_per_image_is_served_padded_with_a_count_per_image():
    src = load_model_source(ZOO / "detector_list.py")
    counts = [[len(d["scores"]) for d in src.model.model(s.args[0])] for s in src.samples]
    assert counts == [[6], [6, 6], [4, 4, 2]]  # n_i varies with the pixels
    out = src.outputs[2]
    assert list(out) == ["boxes", "scores", "labels", "num_detections"]
    assert out["boxes"].shape == (3, 6, 4) and out["labels"].shape == (3, 6)
    assert out["num_detections"].tolist() == [4, 4, 2]
    assert float(out["scores"][2, 2:].abs().sum()) == 0.0  # padding rows are zeros
    assert src.notes == ("forward() returns one dict per image (boxes, scores, labels): served batched, each field "
                         "padded to 6 rows per image (the most the samples returned; set "
                         "GenerateConfig(max_detections=N) to your model's limit, more are cut) with num_detections "
                         "[batch] counting the real ones",)
    capped = load_model_source(ZOO / "detector_list.py", max_detections=3)
    assert capped.outputs[2]["boxes"].shape == (3, 3, 4) and capped.outputs[2]["num_detections"].tolist() == [3, 3, 2]
    assert "GenerateConfig.max_detections" in capped.notes[0]


def test_per_image_dicts_with_a_count_key_are_refused(tmp_path):
    path = tmp_path / "model.py"
    path.write_text("import torch\nclass M(torch.nn.Module):\n    def forward(self, x):\n"
                    "        return [{'boxes': i[:2], 'num_detections': i[:2, 0]} for i in x]\n"
                    "def get_model():\n    return M()\n"
                    "def get_samples():\n    return [torch.ones(b, 3, 4) for b in (1, 2)]\n")
    with pytest.raises(UserError, match="a key 'num_detections', the name of the count output"):
        load_model_source(path)


def test_a_fixed_tuple_of_dicts_is_not_taken_for_detections(tmp_path):
    """Two heads returning a dict each: the list length does not follow the batch, nothing is padded."""
    path = tmp_path / "model.py"
    path.write_text("import torch\nclass M(torch.nn.Module):\n    def forward(self, x):\n"
                    "        return ({'h': x * 2}, {'h': x + 1})\n"
                    "def get_model():\n    return M()\ndef get_samples():\n"
                    "    return [torch.ones(b, 3) for b in (1, 2, 4)]\n")
    src = load_model_source(path)
    assert src.notes == () and isinstance(src.outputs[0], tuple)


def _model_py(tmp_path: Path, samples_body: str) -> Path:
    path = tmp_path / "model.py"
    path.write_text("import torch\ndef get_model():\n    return torch.nn.Linear(2, 2)\n"
                    "def get_samples():\n" + textwrap.indent(textwrap.dedent(samples_body), "    "))
    return path


@pytest.mark.parametrize("exc", ["ValueError", "TypeError"])
def test_a_generator_raising_names_get_samples_and_its_line(tmp_path, exc):
    """Consuming a generator runs its body: a ValueError there was "internal error", a TypeError was
    taken for "returned a generator; return a list"."""
    path = _model_py(tmp_path, "yield torch.ones(1, 2)\nraise %s('boom')\n" % exc)
    with pytest.raises(UserError, match=r"get_samples\(\) raised at line 6: %s: boom$" % exc):
        load_model_source(path)


def test_a_generator_of_samples_is_taken(tmp_path):
    path = _model_py(tmp_path, "yield torch.ones(1, 2)\nyield torch.ones(3, 2)\n")
    assert [s.args[0].shape[0] for s in load_model_source(path).samples] == [1, 3]


def test_one_tensor_from_get_samples_is_refused_not_split_into_rows(tmp_path):
    """Its rows were each taken as a sample and the model was served unbatched, exit 0."""
    path = _model_py(tmp_path, "return torch.ones(4, 2)\n")
    with pytest.raises(UserError, match=r"get_samples\(\) returned one tensor, whose rows would each be taken as a "
                                        r"sample; return a list of samples, e\.g\. \[x\]"):
        load_model_source(path)


def test_a_non_iterable_from_get_samples_says_return_a_list(tmp_path):
    path = _model_py(tmp_path, "return 42\n")
    with pytest.raises(UserError, match=r"get_samples\(\) returned a int; return a list"):
        load_model_source(path)


def test_a_dataclass_under_postponed_annotations_imports(tmp_path):
    """@dataclass looks its module up in sys.modules: model.py was not registered there, and the import
    failed with "'NoneType' object has no attribute '__dict__'"."""
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent("""
        from __future__ import annotations
        from dataclasses import dataclass
        import torch
        @dataclass
        class Cfg:
            width: int = 2
        def get_model():
            return torch.nn.Linear(Cfg().width, 2)
        def get_samples():
            return [torch.ones(1, 2)]
    """))
    assert load_model_source(path).model.in_features == 2


def test_a_sibling_module_imported_inside_get_model_is_found_and_the_path_restored(tmp_path):
    """model.py's folder was on sys.path only while it was imported: ``from helper import Net`` inside
    get_model() raised ModuleNotFoundError."""
    import sys

    (tmp_path / "helper_r7.py").write_text("import torch\nclass Net(torch.nn.Linear):\n"
                                           "    def __init__(self):\n        super().__init__(2, 3)\n")
    path = _model_py(tmp_path, "return [torch.ones(1, 2)]\n")
    path.write_text(path.read_text().replace("return torch.nn.Linear(2, 2)", "from helper_r7 import Net\n"
                                                                              "    return Net()"))
    before = list(sys.path)
    try:
        assert load_model_source(path).model.out_features == 3
        assert sys.path == before
    finally:
        sys.modules.pop("helper_r7", None)


def test_a_failed_import_leaves_neither_the_module_nor_the_folder_behind(tmp_path):
    import sys

    path = tmp_path / "model.py"
    path.write_text("import torch\nraise ValueError('broken')\n")
    before, modules = list(sys.path), set(sys.modules)
    with pytest.raises(UserError, match=r"import failed at line 2: ValueError: broken$"):
        load_model_source(path)
    assert sys.path == before and not [m for m in set(sys.modules) - modules if m.startswith("aitune_user_model_")]
