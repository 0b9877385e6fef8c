"""FlatIO: an exported program of a model that returns a custom pytree node (a registered
dataclass, like Hugging Face's ModelOutput) loads in a fresh process that never registered it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import torch
from torch.utils import _pytree as pytree

from aitune_triton.export.diagnostics import child_failure
from aitune_triton.export.flat_io import flat_inputs, flat_model, forward_caller
from aitune_triton.source import load_model_source
from aitune_triton.spec import record_spec, sample_feed


@dataclasses.dataclass
class Output:  # registered below, in this process only: what transformers does for ModelOutput
    hidden: torch.Tensor
    extra: dict


pytree.register_pytree_node(Output, lambda o: ([o.hidden, o.extra], None), lambda values, _: Output(*values),
                            serialized_type_name="tests.export.test_flat_io.Output",
                            flatten_with_keys_fn=lambda o: ([(pytree.GetAttrKey("hidden"), o.hidden),
                                                             (pytree.GetAttrKey("extra"), o.extra)], None))


class Model(torch.nn.Module):
    def forward(self, ids, *, mask):
        x = ids.float() * mask
        return Output(hidden=x * 2, extra={"total": x.sum(-1), "pair": (x + 1, mask > 0)})


LOAD = textwrap.dedent("""
    import sys, torch
    module = torch.export.load(sys.argv[1]).module()
    out = module(*[torch.ones(3, 5, dtype=torch.int64), torch.ones(3, 5)])
    print(type(out).__name__, [tuple(t.shape) for t in out])
""")


def _load_in_fresh_process(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LOAD, str(path)], capture_output=True, text=True, timeout=300)


def test_flat_export_loads_without_the_output_type_and_keeps_spec_order(tmp_path):
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent("""
        import torch
        from tests.export.test_flat_io import Model
        def get_model():
            return Model()
        def get_samples():
            return [((torch.ones(b, 5, dtype=torch.int64),), {"mask": torch.rand(b, 5)}) for b in (2, 4)]
    """))
    src = load_model_source(path)
    spec = record_spec(src.model, src.samples, src.outputs)
    assert [t.name for t in spec.outputs] == ["hidden", "extra_total", "extra_pair_0", "extra_pair_1"]
    feed = sample_feed(spec, src.samples[1])
    batch = torch.export.Dim("batch", min=1, max=8)

    flat = torch.export.export(flat_model(src.model, spec), flat_inputs(spec, feed),
                               dynamic_shapes={"inputs": ({0: batch}, {0: batch})})
    torch.export.save(flat, tmp_path / "flat.pt2")
    loaded = _load_in_fresh_process(tmp_path / "flat.pt2")
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["tuple", "[(3,", "5),", "(3,),", "(3,", "5),", "(3,", "5)]"]

    # the same model exported as-is needs the dataclass registered to load: what FlatIO avoids
    raw = torch.export.export(src.model, (feed["ids"],), {"mask": feed["mask"]},
                              dynamic_shapes={"ids": {0: batch}, "mask": {0: batch}})
    torch.export.save(raw, tmp_path / "raw.pt2")
    failed = _load_in_fresh_process(tmp_path / "raw.pt2")
    assert failed.returncode != 0
    assert child_failure(failed.stderr).startswith("the artifact refers to the Python type ")

    # forward_caller: the flat artifact called with forward's own arguments, outputs in spec order
    call = forward_caller(flat.module(), spec)
    got = call(feed["ids"], mask=feed["mask"])
    want = [leaf for leaf in pytree.tree_leaves(src.model(feed["ids"], mask=feed["mask"]))]
    assert len(got) == 4 and all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
