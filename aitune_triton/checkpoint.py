"""A Hugging Face checkpoint directory in place of a hand-written ``model.py``.

``plan_checkpoint`` reads ``config.json`` (never the weights) and decides the task from the
architecture, the inputs and the envelope (the sequence range from ``max_position_embeddings`` /
``n_positions``, the fixed image size); ``preflight`` loads the weights and the tokenizer once from
the local path so a bad checkpoint fails here with one line each, before anything is written;
``render_model_py`` writes the ``model.py`` that the normal pipeline then runs unchanged (and that
the user can start from: it is kept in the model directory's ``source/``).

Nothing here downloads: every ``from_pretrained`` passes ``local_files_only=True`` and the
generated file sets ``HF_HUB_OFFLINE=1`` before transformers is imported.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Iterator

from aitune_triton.errors import UserError

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model")
# The generated get_config() declares no batch: generate measures it on the target device (the samples use
# 1, 2 and 4 rows).
BATCH = "batch 1..measured"
# Sequence lengths the samples use (those up to the checkpoint's maximum).
SAMPLE_LENGTHS = (8, 16, 32)


class Task(str, Enum):
    """What the checkpoint is served for: decides the Auto class, the inputs and the outputs."""

    TEXT_CLASSIFICATION = "text-classification"
    TOKEN_CLASSIFICATION = "token-classification"
    FILL_MASK = "fill-mask"
    CAUSAL_LM = "causal-lm"
    EMBEDDING = "embedding"
    IMAGE_CLASSIFICATION = "image-classification"
    IMAGE_EMBEDDING = "image-embedding"

    def __str__(self) -> str:
        return self.value


TASKS = tuple(t.value for t in Task)

AUTO_CLASS = {
    Task.TEXT_CLASSIFICATION: "AutoModelForSequenceClassification",
    Task.TOKEN_CLASSIFICATION: "AutoModelForTokenClassification",
    Task.FILL_MASK: "AutoModelForMaskedLM",
    Task.CAUSAL_LM: "AutoModelForCausalLM",
    Task.EMBEDDING: "AutoModel",
    Task.IMAGE_CLASSIFICATION: "AutoModelForImageClassification",
    Task.IMAGE_EMBEDDING: "AutoModel",
}

# Architecture name endings, most specific first (``GPT2LMHeadModel`` ends in ``Model`` too).
_SUFFIXES = (
    ("ForSequenceClassification", Task.TEXT_CLASSIFICATION),
    ("ForTokenClassification", Task.TOKEN_CLASSIFICATION),
    ("ForMaskedLM", Task.FILL_MASK),
    ("ForCausalLM", Task.CAUSAL_LM),
    ("LMHeadModel", Task.CAUSAL_LM),
    ("ForImageClassification", Task.IMAGE_CLASSIFICATION),
    ("Model", Task.EMBEDDING),
)


@dataclass(frozen=True)
class TensorPlan:
    """One input or output as ``inspect`` shows it: shape in words, dtype, value range."""

    name: str
    dtype: str
    shape: str
    values: str = ""

    def describe(self) -> str:
        return "%s %s %s%s" % (self.name, self.dtype, self.shape, " values %s" % self.values if self.values else "")


@dataclass(frozen=True)
class CheckpointPlan:
    """What ``generate`` would build from a checkpoint directory, read from ``config.json`` alone."""

    path: Path
    architecture: str
    model_type: str
    task: Task
    task_inferred: bool
    vocab_size: int | None
    max_length: int | None
    image_size: int | None
    num_channels: int | None
    has_tokenizer: bool
    weights: str

    @property
    def auto_class(self) -> str:
        return AUTO_CLASS[self.task]

    @property
    def vision(self) -> bool:
        return self.task in (Task.IMAGE_CLASSIFICATION, Task.IMAGE_EMBEDDING)

    @property
    def causal(self) -> bool:
        return self.task is Task.CAUSAL_LM

    @property
    def sample_lengths(self) -> tuple[int, ...]:
        top = self.max_length or max(SAMPLE_LENGTHS)
        return tuple(n for n in SAMPLE_LENGTHS if n <= top) or (top,)

    @property
    def name(self) -> str:
        stem = self.path.name
        name = "".join(c if c.isalnum() or c in "_-" else "_" for c in stem).lstrip("._-")
        return name or "model"

    def inputs(self) -> tuple[TensorPlan, ...]:
        batch = BATCH
        if self.vision:
            return (TensorPlan("pixel_values", "float32", "[%s, %d, %d, %d]"
                               % (batch, self.num_channels or 3, self.image_size or 0, self.image_size or 0)),)
        seq = "seq 1..%s" % (self.max_length or "?")
        vocab = "0..%d" % ((self.vocab_size or 1) - 1)
        return (TensorPlan("input_ids", "int64", "[%s, %s]" % (batch, seq), vocab),
                TensorPlan("attention_mask", "int64", "[%s, %s]" % (batch, seq), "0..1"))

    def outputs(self, config: dict[str, Any]) -> tuple[TensorPlan, ...]:
        labels = len(config.get("id2label") or {}) or config.get("num_labels") or 2
        hidden = config.get("hidden_size") or config.get("n_embd") or config.get("d_model") or "?"
        per_token = "[batch, seq, %s]"
        if self.task in (Task.TEXT_CLASSIFICATION, Task.IMAGE_CLASSIFICATION):
            return (TensorPlan("logits", "float32", "[batch, %s]" % labels),)
        if self.task is Task.TOKEN_CLASSIFICATION:
            return (TensorPlan("logits", "float32", per_token % labels),)
        if self.task in (Task.FILL_MASK, Task.CAUSAL_LM):
            return (TensorPlan("logits", "float32", per_token % (self.vocab_size or "vocab")),)
        tokens = "patches+1" if self.vision else "seq"
        return (TensorPlan("last_hidden_state", "float32", "[batch, %s, %s]" % (tokens, hidden)),
                TensorPlan("pooler_output", "float32", "[batch, %s] (where the architecture has a pooler)" % hidden))

    def envelope(self) -> str:
        """The serving envelope get_config() declares, in words."""
        if self.vision:
            return "%s, image %dx%d fixed (config.image_size)" % (BATCH, self.image_size or 0, self.image_size or 0)
        return "%s, sequence 1..%s (config.%s)" % (BATCH, self.max_length, self.length_key)

    @property
    def length_key(self) -> str:
        config = read_config(self.path)
        return next((k for k in _LENGTH_KEYS if isinstance(config.get(k), int)), _LENGTH_KEYS[0])

    def summary(self) -> str:
        """The one line generate prints: what was inferred."""
        return "%s (%s) -> task %s%s; inputs %s; envelope %s" % (
            self.architecture, self.model_type, self.task, "" if self.task_inferred else " (--task)",
            ", ".join(t.name for t in self.inputs()), self.envelope())


_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")


def _fail(path: Path, problem: str) -> UserError:
    return UserError("%s: %s" % (path, problem))


def read_config(path: Path) -> dict[str, Any]:
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        raise _fail(Path(path), "no config.json; pass a Hugging Face checkpoint directory (save_pretrained output)")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise _fail(config_path, "not readable JSON: %s" % exc) from None
    if not isinstance(config, dict):
        raise _fail(config_path, "holds a %s, not a JSON object" % type(config).__name__)
    return config


def infer_task(architecture: str, config: dict[str, Any]) -> Task | None:
    """The task an architecture name implies (``BertModel`` -> embedding, ``ViTModel`` -> image
    embedding), or None when its name says nothing we serve."""
    for suffix, task in _SUFFIXES:
        if architecture.endswith(suffix):
            if task is Task.EMBEDDING and "image_size" in config:
                return Task.IMAGE_EMBEDDING
            return task
    return None


def plan_checkpoint(path: Path, task: str | None = None) -> CheckpointPlan:
    """Read ``config.json`` and decide what to generate. ``task`` overrides the guess."""
    path = Path(path).resolve()
    if not path.exists():
        raise _fail(path, "not found; pass a Hugging Face checkpoint directory (with config.json)")
    if not path.is_dir():
        raise _fail(path, "not a directory; pass a Hugging Face checkpoint directory (with config.json)%s"
                    % ("; a model.py is not inspected: generate runs it" if path.suffix == ".py" else ""))
    config = read_config(path)
    architectures = config.get("architectures") or []
    architecture = str(architectures[0]) if isinstance(architectures, list) and architectures else ""
    model_type = str(config.get("model_type") or "")
    if not model_type:
        raise _fail(path / CONFIG_FILE, "no model_type; it is not a transformers config (save it with "
                                        "save_pretrained)")
    if task is not None:
        if task not in TASKS:
            raise UserError("unknown task %r; choose from %s" % (task, ", ".join(TASKS)))
        chosen, inferred = Task(task), False
    else:
        guess = infer_task(architecture, config) if architecture else None
        if guess is None:
            raise _fail(path / CONFIG_FILE, "%s: cannot tell the task from it; pass --task (one of %s)"
                        % ("architecture %s" % architecture if architecture else "no architectures entry",
                           ", ".join(TASKS)))
        chosen, inferred = guess, True
    weights = next((w for w in WEIGHT_FILES if (path / w).is_file()), "")
    if not weights:
        raise _fail(path, "no weights (%s); save the model with save_pretrained" % ", ".join(WEIGHT_FILES[::2]))
    max_length = next((config[k] for k in _LENGTH_KEYS if isinstance(config.get(k), int) and config[k] > 0), None)
    plan = CheckpointPlan(path=path, architecture=architecture or AUTO_CLASS[chosen], model_type=model_type,
                          task=chosen, task_inferred=inferred, vocab_size=config.get("vocab_size"),
                          max_length=max_length, image_size=config.get("image_size"),
                          num_channels=config.get("num_channels"),
                          has_tokenizer=any((path / f).is_file() for f in TOKENIZER_FILES), weights=weights)
    if plan.vision and not isinstance(plan.image_size, int):
        raise _fail(path / CONFIG_FILE, "task %s needs image_size in config.json" % chosen)
    if not plan.vision and not (isinstance(plan.vocab_size, int) and plan.vocab_size > 0):
        raise _fail(path / CONFIG_FILE, "task %s needs vocab_size in config.json" % chosen)
    if not plan.vision and max_length is None:
        raise _fail(path / CONFIG_FILE, "no maximum sequence length (%s); cannot set the envelope"
                    % " / ".join(_LENGTH_KEYS))
    return plan


OFFLINE_ENV = "HF_HUB_OFFLINE"


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError("generating from a checkpoint needs transformers: pip install transformers") from None
    return transformers


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@contextlib.contextmanager
def offline_and_quiet() -> Iterator[Any]:
    """transformers, offline and without its load reports and progress bars, for the ``with`` block
    only: a Python API caller's process reaches the Hub and logs as before once generate returns.

    The generated model.py sets ``HF_HUB_OFFLINE=1`` at import (it must, in Triton's stub), so its
    run in this process is wrapped too. huggingface_hub reads the variable once, when it is first
    imported: it is imported before the variable changes, and its constant is set and restored as well."""
    transformers = _transformers()
    import huggingface_hub.constants as hub

    env, constant = os.environ.get(OFFLINE_ENV), hub.HF_HUB_OFFLINE
    verbosity, bars = transformers.logging.get_verbosity(), transformers.utils.logging.is_progress_bar_enabled()
    os.environ[OFFLINE_ENV] = "1"
    hub.HF_HUB_OFFLINE = True
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield transformers
    finally:
        if env is None:
            os.environ.pop(OFFLINE_ENV, None)
        else:
            os.environ[OFFLINE_ENV] = env
        hub.HF_HUB_OFFLINE = constant
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()


def preflight(plan: CheckpointPlan) -> None:
    """Load the weights (and the tokenizer) once from the local path: a checkpoint that cannot load
    fails here, one line, before a model.py or a repository is written."""
    with offline_and_quiet() as transformers:
        _preflight(transformers, plan)


def _preflight(transformers: Any, plan: CheckpointPlan) -> None:
    auto = getattr(transformers, plan.auto_class)
    try:
        # mismatched sizes come back in the loading info (named) rather than as a bare error
        _, info = auto.from_pretrained(str(plan.path), local_files_only=True, output_loading_info=True,
                                       ignore_mismatched_sizes=True)
    except ValueError as exc:  # an architecture the Auto class does not map for this task
        raise _fail(plan.path, "%s cannot load it for task %s: %s" % (plan.auto_class, plan.task,
                                                                       _first_line(exc))) from None
    except Exception as exc:
        raise _fail(plan.path, "the weights do not load: %s: %s" % (type(exc).__name__, _first_line(exc))) from None
    missing = list(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        names = sorted(str(k[0]) + (" [%s in the file vs %s from config.json]" % tuple(
            "x".join(map(str, shape)) for shape in k[1:3]) if len(k) >= 3 else "")
            if isinstance(k, tuple) else str(k) for k in (mismatched or missing))
        raise _fail(plan.path / plan.weights, "the weights do not match %s for task %s: %d tensor(s) %s (%s); "
                    "check config.json or pass the right --task"
                    % (plan.architecture, plan.task, len(names), "of another shape" if mismatched else "missing",
                       ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")))
    if plan.has_tokenizer:
        try:
            transformers.AutoTokenizer.from_pretrained(str(plan.path), local_files_only=True)
        except Exception as exc:
            raise _fail(plan.path, "the tokenizer does not load: %s: %s; fix or remove the tokenizer files "
                        "(without them the samples are random token ids)" % (type(exc).__name__,
                                                                            _first_line(exc))) from None


def render_model_py(plan: CheckpointPlan) -> str:
    """The ``model.py`` for this checkpoint (get_model, get_samples, get_config)."""
    from aitune_triton.templating import render

    return render("hf_model.py.j2", path=str(plan.path), architecture=plan.architecture, task=plan.task.value,
                  auto_class=plan.auto_class, vision=plan.vision, causal=plan.causal,
                  has_tokenizer=plan.has_tokenizer, vocab_size=plan.vocab_size or 0,
                  max_length=plan.max_length or 0, length_key=plan.length_key,
                  image_size=plan.image_size or 0, num_channels=plan.num_channels or 3,
                  lengths=plan.sample_lengths, name=plan.name)


def write_model_py(plan: CheckpointPlan, directory: Path) -> Path:
    """Write the generated model.py into ``directory/<checkpoint name>/model.py`` (the folder name
    becomes the default Triton model name) and return its path."""
    target = Path(directory) / plan.name / "model.py"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_model_py(plan))
    return target


def describe(plan: CheckpointPlan, backends: tuple[str, ...] = ("python", "tensorrt")) -> list[str]:
    """What ``inspect`` prints: the plan, line by line."""
    config = read_config(plan.path)
    lines = ["checkpoint: %s" % plan.path,
             "architecture: %s (model_type %s)" % (plan.architecture, plan.model_type),
             "task: %s (%s)" % (plan.task, "inferred from the architecture" if plan.task_inferred else "--task"),
             "loads with: transformers.%s.from_pretrained(path, local_files_only=True%s)"
             % (plan.auto_class, ", use_cache=False" if plan.causal else ""),
             "weights: %s" % plan.weights,
             "samples: %s" % ("random pixel tensors at batch 1, 2, 4" if plan.vision else
                              "%s at batch 1, 2, 4, lengths %s" % (
                                  "the checkpoint's tokenizer on built-in sentences" if plan.has_tokenizer
                                  else "random token ids below vocab_size %d (no tokenizer)" % (plan.vocab_size or 0),
                                  ", ".join(map(str, plan.sample_lengths))))]
    lines += ["input: %s" % t.describe() for t in plan.inputs()]
    lines += ["output: %s" % t.describe() for t in plan.outputs(config)]
    lines.append("envelope: %s" % plan.envelope())
    formats = {"python": "python backend: PyTorch fallback, first of aoti, export, eager that matches eager",
               "tensorrt": "tensorrt: ONNX export checked with ONNX Runtime, then a plan (built where TensorRT "
                           "and a GPU are usable, staged otherwise)",
               "onnxruntime": "onnxruntime: ONNX export checked with ONNX Runtime"}
    lines += ["format: %s" % formats[b] for b in backends if b in formats]
    lines.append("model name: %s" % plan.name)
    return lines
