"""The pure half of the served runtime (``aitune_runtime.py``), tested directly; the whole runtime
runs in Triton in tests/live/test_fallback_live.py and against a stand-in stub in
tests/export/test_torch_export.py."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json

import pytest

from aitune_triton.runtime import RUNTIME_FILES, runtime_source
from aitune_triton.runtime.aitune_runtime import (
    DATA_FILE,
    DataError,
    HostFacts,
    InputBinding,
    ModelData,
    Requirements,
    artifact_problem,
    cpu_flags_here,
    instance_threads,
    isa_flags,
    pad_target,
    release,
    shape_problem,
)

AOTI = Requirements(python="3.11", torch="2.13.0+cpu", torch_rule="exact", torch_min="2.13.0", cuda=None,
                    triton_min="2.51")
EXPORT = Requirements(python="3.11", torch="2.13.0+cpu", torch_rule="export-schema", torch_min="2.13.0", cuda=None,
                      triton_min="2.51", export_schema_major=8)
EAGER = Requirements(python="3.11", torch="2.13.0+cpu", torch_rule="minimum", torch_min="2.4.0", cuda="12.8",
                     triton_min="2.51")


def data(**changes) -> dict:
    d = ModelData(
        generator="aitune-triton test", format="export", artifact_device="cpu",
        files={"export": "model.export.pt2"}, sha256={"model.export.pt2": hashlib.sha256(b"program").hexdigest()},
        max_batch_size=8,
        inputs=(InputBinding("image", "float32", "arg", 0, True, ((1, 8), (3, 3), (8, None))),
                InputBinding("mask", "bool", "kwarg", "mask", False, ((4, 4),))),
        outputs=(("output_0", "float32"),), pad_to_buckets=None, cuda_graphs=True, graph_batches=(1, 2, 4, 8),
        max_graphs=32, requirements=EXPORT).to_dict()
    d.update(changes)
    return d


def test_runtime_files_import_nothing_but_torch_triton_and_the_stdlib():
    """Triton's stub has only the model directory: the runtime must not need aitune_triton."""
    for name in RUNTIME_FILES:
        tree = ast.parse(runtime_source(name))
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                     and not n.level}
        assert "aitune_triton" not in imported, name
        assert imported <= {"__future__", "hashlib", "json", "os", "re", "dataclasses", "typing", "importlib",
                            "platform", "sys", "time", "uuid", "torch", "triton_python_backend_utils", "aitune_runtime",
                            "aitune_staging", "aitune_eager", "pickle"}, name
    with pytest.raises(ValueError, match="not a runtime file"):
        runtime_source("../cli.py")


def test_release_parses_local_and_prerelease_versions():
    assert release("2.13.0+cpu") == (2, 13, 0)
    assert release("2.5.0a0+e000cf0ad9.nv24.10") == (2, 5, 0)
    assert release("2.6") == (2, 6, 0)
    with pytest.raises(DataError, match="not a version"):
        release("nightly")


def test_aoti_needs_the_exact_torch_release():
    assert AOTI.problem("cnn", "3.11.7", "2.13.0+cu128") is None  # the local build tag does not matter
    msg = AOTI.problem("cnn", "3.12.3", "2.5.0a0+e000cf0ad9.nv24.10")
    assert msg == ("model cnn needs torch 2.13.0 (its AOTInductor package loads only with the torch that compiled it) "
                   "but the stub has torch 2.5.0a0+e000cf0ad9.nv24.10: serve it from a Triton `-pyt-python-py3` "
                   "image (or an image with Python 3.11 and torch 2.13.0 installed), or pack the environment with "
                   "`aitune-triton pack-env REPO --model cnn`")
    assert "\n" not in msg


def test_missing_torch_names_what_to_install():
    msg = EXPORT.problem("enc", "3.12.3", None)
    assert msg.startswith("model enc needs a torch whose torch.export schema major is 8 (e.g. torch 2.13) but the "
                          "stub's Python 3.12.3 has no torch: ")
    assert msg.endswith("`aitune-triton pack-env REPO --model enc`")


def test_export_loads_across_torch_releases_with_the_same_schema_major():
    assert EXPORT.problem("m", "3.11", "2.14.1", export_schema=8) is None
    assert "saved with torch.export schema 8, this torch reads schema 9" in \
        EXPORT.problem("m", "3.11", "2.20.0", export_schema=9)
    assert "built for torch >= 2.13.0" in EXPORT.problem("m", "3.11", "2.12.0", export_schema=8)


def test_eager_takes_any_torch_from_the_floor_and_gpu_needs_cuda():
    assert EAGER.problem("m", "3.11", "2.4.1") is None
    assert "built for torch >= 2.4.0" in EAGER.problem("m", "3.11", "2.3.0")
    msg = EAGER.problem("m", "3.11", "2.13.0+cpu", on_gpu=True, cuda_available=False)
    assert msg.startswith("model m runs on GPU instances but the stub's torch 2.13.0+cpu sees no CUDA device: ")
    assert "torch >= 2.4.0 for CUDA 12.8" in msg
    assert EAGER.problem("m", "3.11", "2.13.0", on_gpu=True, cuda_available=True) is None


def test_python_difference_is_a_note_not_an_error():
    assert AOTI.python_note("3.11.2") is None
    assert AOTI.python_note("3.12.3") == "generated with Python 3.11, served with Python 3.12.3"


def test_model_data_round_trips_and_validates():
    d = data()
    parsed = ModelData.from_dict(json.loads(json.dumps(d)))
    assert parsed.to_dict() == d
    assert parsed.inputs[0].ranges == ((1, 8), (3, 3), (8, None)) and parsed.inputs[1].key == "mask"
    with pytest.raises(DataError, match="data schema 7 is not supported"):
        ModelData.from_dict(data(schema=7))
    with pytest.raises(DataError, match="must be a plain file name"):
        ModelData.from_dict(data(files={"export": "../model.export.pt2"}))
    with pytest.raises(DataError, match="no SHA-256 recorded for model.export.pt2"):
        ModelData.from_dict(data(sha256={}))
    with pytest.raises(DataError, match="unknown artifact format 'onnx'"):
        ModelData.from_dict(data(format="onnx"))
    with pytest.raises(DataError, match=r"malformed aitune_model.json: KeyError: 'inputs'"):
        ModelData.from_dict({k: v for k, v in data().items() if k != "inputs"})
    with pytest.raises(DataError, match="unknown torch_rule 'latest'"):
        ModelData.from_dict(data(requirements=dict(data()["requirements"], torch_rule="latest")))


def test_load_reports_a_missing_or_broken_data_file(tmp_path):
    with pytest.raises(DataError, match="cannot read .*aitune_model.json"):
        ModelData.load(str(tmp_path))
    (tmp_path / DATA_FILE).write_text("{")
    with pytest.raises(DataError, match="cannot read"):
        ModelData.load(str(tmp_path))
    (tmp_path / DATA_FILE).write_text(json.dumps(data()))
    assert ModelData.load(str(tmp_path)).format == "export"


def test_artifact_hash_is_checked_before_loading(tmp_path):
    parsed = ModelData.from_dict(data())
    assert artifact_problem(str(tmp_path), parsed) == \
        "artifact model.export.pt2 is missing from %s: regenerate the model" % tmp_path
    (tmp_path / "model.export.pt2").write_bytes(b"program")
    assert artifact_problem(str(tmp_path), parsed) is None
    (tmp_path / "model.export.pt2").write_bytes(b"programme")
    msg = artifact_problem(str(tmp_path), parsed)
    assert msg.startswith("artifact model.export.pt2 in %s does not match its recorded SHA-256 (expected %s..., "
                          "found %s...)" % (tmp_path, hashlib.sha256(b"program").hexdigest()[:12],
                                            hashlib.sha256(b"programme").hexdigest()[:12]))


def test_shape_checks_name_the_axis_and_the_range():
    image = ModelData.from_dict(data()).inputs[0]
    assert shape_problem(image, (2, 3, 8)) is None and shape_problem(image, (8, 3, 4096)) is None
    assert shape_problem(image, (2, 3)) == "input 'image' has shape [2, 3], the model takes rank 3"
    assert shape_problem(image, (9, 3, 8)) == ("input 'image' axis 0 is 9, the model takes 1..8 (widen it with "
                                               "--max-batch-size at generate)")
    assert shape_problem(image, (1, 4, 8)) == "input 'image' axis 1 is 4, the model takes 3"
    assert shape_problem(image, (1, 3, 7)) == ("input 'image' axis 2 is 7, the model takes 8.. (widen it with "
                                               "--axis image:2=LO..HI (axis_ranges in get_config()) at generate)")


def test_a_scalar_input_of_a_model_without_batch_axis_arrives_as_one_element():
    scalar = InputBinding("t", "float32", "arg", 0, False, ())
    assert shape_problem(scalar, (1,)) is None and shape_problem(scalar, ()) is None
    assert shape_problem(scalar, (2,)) == "input 't' has shape [2], the model takes rank 0"


def test_padding_and_threads():
    assert [pad_target((1, 2, 4, 8), n) for n in (1, 3, 5, 8, 9)] == [1, 4, 8, 8, 9]
    assert pad_target((), 3) == 3
    config = {"instance_group": [{"count": 2, "kind": "KIND_CPU"}, {"count": 1, "kind": "KIND_GPU"}]}
    assert instance_threads(config, 16) == 8 and instance_threads(config, 1) == 1 and instance_threads({}, 4) == 4


# ----------------------------------------------------------------------------- the host an AOTInductor package needs

# /proc/cpuinfo flags of an AMD EPYC with AVX2 and no AVX-512 (where the committed AVX-512 package died with
# "trap invalid opcode"), and of the AVX-512 EPYC that compiled it
AVX2_HOST = frozenset("fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt avx avx2 fma f16c bmi1 bmi2 movbe adx sha_ni "
                      "vaes vpclmulqdq".split())
AVX512_HOST = AVX2_HOST | {"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                           "gfni"}
AOTI_AVX512 = Requirements(python="3.11", torch="2.13.0+cpu", torch_rule="exact", torch_min="2.13.0", cuda=None,
                           triton_min="2.51", machine="x86_64", cpu_isa="AVX512 AVX512_VNNI",
                           cpu_flags=isa_flags(AVX512_HOST))
AOTI_H100 = Requirements(python="3.11", torch="2.11.0+cu130", torch_rule="exact", torch_min="2.11.0", cuda="13.0",
                         triton_min="2.51", machine="x86_64", cpu_isa="AVX2", cpu_flags=isa_flags(AVX2_HOST),
                         compute_capability="9.0")


def test_isa_flags_keep_the_instruction_set_extensions_only():
    assert isa_flags(["fpu", "avx2", "sse2", "avx512f", "amx_tile", "fma", "lm", "avx512_vnni"]) == \
        ("amx_tile", "avx2", "avx512_vnni", "avx512f", "fma")
    assert "avx512bw" in AOTI_AVX512.cpu_flags and "fpu" not in AOTI_AVX512.cpu_flags


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx avx2 fma\n\nprocessor\t: 1\n")
    assert cpu_flags_here(str(cpuinfo)) == {"fpu", "avx", "avx2", "fma"}
    assert cpu_flags_here(str(tmp_path / "none")) is None


def test_an_avx512_package_is_refused_on_an_avx2_host_in_one_line():
    host = HostFacts("x86_64", AVX2_HOST, "AVX2")
    msg = AOTI_AVX512.host_problem("cnn", host)
    assert msg == ("model cnn: its AOTInductor package needs x86_64 CPUs with AVX512 AVX512_VNNI but "
                   "this host's CPU lacks avx512_bf16 avx512_vnni avx512bw and 5 more: regenerate it on such a host or "
                   "with `--fallback-format export` / `--portable` (any host)")
    assert len(msg) <= 240  # validate's summary shows a detail's first 240 characters
    assert AOTI_AVX512.host_problem("cnn", HostFacts("x86_64", AVX512_HOST | {"amx_tile"}, "AVX512")) is None
    # no /proc/cpuinfo (not Linux): torch's own capability decides
    assert "this host's CPU supports only AVX2" in AOTI_AVX512.host_problem("cnn", HostFacts("x86_64", None, "AVX2"))
    assert AOTI_AVX512.host_problem("cnn", HostFacts("x86_64", None, "AVX512")) is None
    assert "but this host is aarch64:" in AOTI_AVX512.host_problem("cnn", HostFacts("aarch64", frozenset(), None))


def test_a_gpu_package_needs_its_compute_capability_and_cuda():
    h100 = HostFacts("x86_64", AVX512_HOST, "AVX512", "13.0", "NVIDIA H100 80GB HBM3", "9.0")
    assert AOTI_H100.host_problem("rn50", h100, on_gpu=True) is None
    a100 = HostFacts("x86_64", AVX2_HOST, "AVX2", "13.0", "NVIDIA A100-SXM4-80GB", "8.0")
    assert AOTI_H100.host_problem("rn50", a100, on_gpu=True).startswith(
        "model rn50: its AOTInductor package needs x86_64 CPUs with AVX2 and GPUs of compute capability "
        "9.0 with CUDA 13.0 but NVIDIA A100-SXM4-80GB has compute capability 8.0: regenerate it on such a host")
    cu128 = HostFacts("x86_64", AVX2_HOST, "AVX2", "12.8", "NVIDIA H100 80GB HBM3", "9.0")
    assert "but the stub's torch is built for CUDA 12.8:" in AOTI_H100.host_problem("rn50", cu128, on_gpu=True)
    unknown = dataclasses.replace(AOTI_H100, cuda="unknown")  # generate-time torch.version.cuda was None
    assert unknown.host_problem("rn50", cu128, on_gpu=True) is None


def test_export_and_eager_need_nothing_of_the_host_and_old_data_reads():
    anywhere = HostFacts("aarch64", frozenset(), "DEFAULT")
    assert EXPORT.host_problem("m", anywhere) is None and EAGER.host_problem("m", anywhere, on_gpu=True) is None
    assert EXPORT.host_needs() is None
    assert Requirements.from_dict(AOTI_AVX512.to_dict()) == AOTI_AVX512
    old = {k: v for k, v in AOTI.to_dict().items() if k not in ("machine", "cpu_isa", "cpu_flags",
                                                                 "compute_capability")}
    assert Requirements.from_dict(old) == AOTI  # written before the host was recorded: nothing to check
    with pytest.raises(DataError, match="cpu_flags must be a list of strings"):
        Requirements.from_dict(dict(AOTI.to_dict(), cpu_flags="avx2"))
