"""Submit-time checks of a job's model: it exists, it is the right kind, its head is trained.

Without these a wrong model is found only by the workers (a missing path fails
every shard after the model library's cryptic message) or never (a T5 checkpoint
for ``ner`` loads with a new, random classifier and "finds" ``LABEL_0`` entities).
Here the producer reads the model's ``config.json`` itself, with what only transformers'
config classes and auto mappings know kept as data in :mod:`jobs.model_table` (importing
transformers costs seconds: it imports torch), and the names of its weights from the
safetensors header, without loading weights (a hub model: one download of config.json):

- a local directory must exist and hold a config (``tokenize``: any tokenizer files);
- a hub id must be in the local cache or resolvable on the hub; offline, the error says
  how to get it into the cache;
- the config must fit the task (its ``model_requirement``, a class attribute of the task
  type, :class:`jobs.engine.base.ModelRequirement`): a token
  classification head for ``ner``, a QA head for ``qa``, an encoder-decoder for the
  seq2seq tasks, with label names where the task reports labels;
- a head the checkpoint does not hold would be newly initialised (random output): an
  error unless the job sets ``allow_untrained_head: true``;
- ``engine: onnxruntime`` needs an architecture its exporter handles.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.engine.onnxruntime.support import check_model_type
from jobs.errors import SpecError
from jobs.model_table import HEAD_CLASSES
from jobs.pinning import HEADER_LIMIT
from jobs.settings import Settings
from jobs.tasks.registry import get_task_class
from jobs.trust import check_model as allowed_model
from jobs.trust import looks_like_path, remote_code
from producer.model_config import ModelConfig, read_config, table_is_current

if TYPE_CHECKING:
    from jobs.engine.base import ModelRequirement
    from jobs.spec import JobSpec

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "source.spm")
HUB_TIMEOUT = 5.0


@dataclass(frozen=True)
class ModelFiles:
    """Where the model's files are: a local directory, or a hub id read through the cache."""

    model: str
    revision: str | None
    local: Path | None

    def get(self, name: str) -> Path | None:
        """The file's local path (downloaded to the cache when needed), None when the model has none."""
        if self.local is not None:
            path = self.local / name
            return path if path.is_file() else None
        return _hub_file(self.model, name, self.revision)


def check_model(spec: JobSpec, settings: Settings | None = None) -> list[str]:
    """Raise SpecError("model", ...) when the model cannot serve ``spec``; returns warnings."""
    settings = settings or Settings()
    allowed_model(spec.resolved_model(), settings)
    requirement = get_task_class(spec.task).model_requirement
    if requirement is None:
        return []
    files = locate(spec.resolved_model(), spec.revision)
    config_file = files.get(CONFIG_FILE)
    if config_file is None:
        if not requirement.needs_config:
            if files.local is not None and not any((files.local / name).is_file() for name in TOKENIZER_FILES):
                raise SpecError("model", f"{files.local} holds no tokenizer files ({', '.join(TOKENIZER_FILES)})")
            return []
        where = f"the directory {files.local}" if files.local else f"the hub repository {files.model}"
        raise SpecError("model", f"{where} has no {CONFIG_FILE}, so it is not a transformers model; point "
                                 "`model` at the directory that holds config.json and the weights")
    config = _config(spec, config_file, remote_code(spec.trust_remote_code, settings))
    return _check_config(spec, requirement, config, files)


def locate(model: str, revision: str | None = None) -> ModelFiles:
    """A local directory when ``model`` names one, else a hub id; SpecError for a missing path."""
    path = Path(os.path.expanduser(model))
    if path.is_dir():
        return ModelFiles(model, revision, path)
    if path.exists():
        raise SpecError("model", f"{model} is a file; `model` must be a hub id or a model directory")
    if looks_like_path(model):
        raise SpecError("model", f"the local model directory {model} does not exist; check the path "
                                 "(relative paths in a job file are relative to that file)")
    return ModelFiles(model, revision, None)


def _config(spec: JobSpec, config_file: Path, trusted: bool) -> ModelConfig:
    try:
        return read_config(config_file, trusted)
    except (ValueError, OSError) as exc:  # an unknown model type, a broken file, remote code not trusted ...
        raise SpecError("model", f"cannot read the config of {spec.resolved_model()}: {exc}") from None


def _check_config(spec: JobSpec, requirement: ModelRequirement, config: ModelConfig, files: ModelFiles) -> list[str]:
    model = spec.resolved_model()
    model_type = config.model_type
    architectures = list(config.architectures)
    described = f"{model} ({', '.join(architectures) or model_type})"
    if spec.engine == "onnxruntime":  # the exporter's architectures, custom code or not
        check_model_type(model_type)
    if config.auto_map:  # custom code: its classes are not known here
        return []
    if requirement.encoder_decoder and not config.is_encoder_decoder:
        raise SpecError("model", f"{described} is not {requirement.kind}, which task {spec.task} needs "
                                 "(a T5, BART, Marian, M2M100 ... checkpoint)")
    loads = _class_for(requirement, model_type)
    if requirement.mapping and loads is None:
        raise SpecError("model", f"{described} cannot be loaded as {requirement.kind} (transformers has no such "
                                 f"class for model type {model_type!r}); task {spec.task} needs {requirement.kind}")
    warnings: list[str] = []
    if requirement.head_weights and loads:
        untrained = _untrained_head(requirement, loads, architectures, files)
        if untrained and not spec.allow_untrained_head:
            raise SpecError("model", f"{described} is not {requirement.kind}: {untrained}, so its output would be "
                                     f"random. Use a checkpoint fine-tuned for {spec.task}, or set "
                                     "`allow_untrained_head: true` if that is what you want")
        if untrained:
            warnings.append(f"model {model}: {untrained} (allowed by allow_untrained_head)")
    if requirement.needs_labels:
        warnings += _label_warnings(model, config)
    return warnings


def _class_for(requirement: ModelRequirement, model_type: str) -> str | None:
    if requirement.mapping is None:
        return None
    if table_is_current():
        found = HEAD_CLASSES[requirement.mapping].get(model_type)
    else:
        from transformers.models.auto import modeling_auto

        found = getattr(modeling_auto, requirement.mapping).get(model_type)
    return found if isinstance(found, str) else None


def _untrained_head(requirement: ModelRequirement, loads: str, architectures: list[str],
                    files: ModelFiles) -> str | None:
    """Why the task's head would be newly initialised, or None when the checkpoint holds it."""
    if architectures and loads not in architectures:
        return (f"it was saved as {', '.join(architectures)}, and loading it as {loads} would create a new, "
                "untrained head")
    names = weight_names(files)
    if names is not None and not any(part in requirement.head_weights for name in names for part in name.split(".")):
        return f"its weights hold no {loads} head ({' or '.join(requirement.head_weights)} weights)"
    return None


def _label_warnings(model: str, config: ModelConfig) -> list[str]:
    labels = list(config.labels)
    if labels and all(label.startswith("LABEL_") for label in labels):
        return [f"model {model}: its config names no labels (id2label is {', '.join(labels[:4])}"
                f"{' ...' if len(labels) > 4 else ''}), so entities will be named like that"]
    return []


def weight_names(files: ModelFiles) -> list[str] | None:
    """Weight names from the safetensors header (or index), without reading any weight; None when unknown."""
    index = files.get(SAFETENSORS_INDEX) if files.local is not None else None
    if index is not None:
        return list(json.loads(index.read_text()).get("weight_map", {}))
    single = files.get(SAFETENSORS_FILE) if files.local is not None else _cached(files, SAFETENSORS_FILE)
    if single is None:
        return None
    with open(single, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > HEADER_LIMIT:
            return None
        header = json.loads(handle.read(length))
    return [name for name in header if name != "__metadata__"]


def _cached(files: ModelFiles, name: str) -> Path | None:
    """A hub file only if it is already in the cache: weights are never downloaded to check them."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(files.model, name, revision=files.revision)
    return Path(found) if isinstance(found, str) else None


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def hub_reachable(timeout: float = HUB_TIMEOUT) -> bool:
    """A TCP connection to the hub's endpoint opens (the hub library itself retries for half a minute)."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    parts = urlsplit(constants.ENDPOINT)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_refusal(model: str, revision: str | None, exc: BaseException) -> SpecError | None:
    """The hub's permanent answers (gated, no such model, no such revision) as a SpecError; None for the others."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(exc, GatedRepoError):  # before its base class, RepositoryNotFoundError
        return SpecError("model", f"{model} is a gated repository on the hub: accept its terms and log in "
                                  "(`hf auth login`, or HF_TOKEN)")
    if isinstance(exc, RepositoryNotFoundError):
        return SpecError("model", f"there is no model {model} on the Hugging Face hub (or it is private: log "
                                  "in with `hf auth login` or HF_TOKEN); check the id or give a local directory")
    if isinstance(exc, RevisionNotFoundError):
        return SpecError("revision", f"{model} has no revision {revision!r} on the hub")
    return None


def _hub_file(model: str, name: str, revision: str | None) -> Path | None:
    """The hub file through the cache; None when the repository has no such file."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError, LocalEntryNotFoundError

    try:
        found = try_to_load_from_cache(model, name, revision=revision)
    except HFValidationError as exc:
        raise SpecError("model", f"{model!r} is neither a local directory nor a valid hub id ({exc})") from None
    if isinstance(found, str):
        return Path(found)
    if found is not None:  # the cache knows the repository has no such file
        return None
    if hub_offline():
        if name != CONFIG_FILE:
            return None
        raise SpecError("model", f"{model} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set "
                                 "(offline mode); download it first on a machine online "
                                 f"(`hf download {model}`), or point `model` at a local directory")
    if not hub_reachable():
        raise SpecError("model", f"{model} is not in the local Hugging Face cache and the hub cannot be reached "
                                 "from this machine; connect it, or download the model first and run offline "
                                 "(HF_HUB_OFFLINE=1, offline mode), or give a local directory")
    try:
        return Path(hf_hub_download(model, name, revision=revision))
    except LocalEntryNotFoundError as exc:  # a subclass of EntryNotFoundError: the network, not the file
        raise SpecError("model", f"cannot reach the Hugging Face hub to resolve {model} and it is not in the "
                                 f"local cache ({exc}); connect this machine, or download the model first and "
                                 "run offline (HF_HUB_OFFLINE=1), or give a local directory") from None
    except EntryNotFoundError:
        return None
    except OSError as exc:  # the hub's HTTP errors are OSErrors too
        refusal = hub_refusal(model, revision, exc)
        if refusal is not None:
            raise refusal from None
        raise SpecError("model", f"cannot reach the Hugging Face hub to resolve {model} and it is not in the local "
                                 f"cache ({type(exc).__name__}); connect this machine, or download the model "
                                 "first and run offline (HF_HUB_OFFLINE=1), or give a local directory") from None
