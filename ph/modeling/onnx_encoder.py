"""A sentence-transformers model run by ONNX Runtime: the fast backend of the shared text
encoder (`encoder_args: {backend: onnx, quantize: none | int8}`).

The ONNX file is exported offline, at first use, from the model folder already on disk
(the packaged all-MiniLM-L6-v2 or a local folder): the transformer with mean pooling and
L2 normalisation in one graph, then optionally quantized (dynamic int8). It goes into the
cache folder under a key made of the model's file contents, the quantization and the
versions of torch, onnx and onnxruntime, so two models of one name never share an
export, and a package upgrade exports again. One process builds while others wait for
it (a file lock); a build is written to a temporary folder and renamed into place with
its manifest (the file's sha256) last, so nothing half-written is ever loaded. Every load
checks the sha256: a damaged export is rebuilt, never used.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .. import settings
from ..errors import ConfigError
from ..stores.fileio import file_lock

log = logging.getLogger("ph.encoders")
ARGS = "Inference.preprocess.args.encoder_args"
QUANTIZE = ("none", "int8")
FORMAT = 1  # bump when the exported graph changes
INSTALL = ("install ph's 'encoder' extra, which has onnxruntime: pip install -c constraints.txt "
           "-e '.[encoder]' in the ph folder (make setup does)")


def check_quantize(value) -> str:
    if value not in QUANTIZE:
        raise ConfigError(f"{ARGS}.quantize: {value!r} is not supported; use one of "
                          f"{', '.join(QUANTIZE)} (int8 only with backend: onnx)")
    return value


def pooling_dim(folder: Path) -> int:
    """The embedding size of a mean-pooled model folder.

    Raises:
        ConfigError: the model is not Transformer + mean Pooling (+ Normalize), the only
            layout the ONNX export reproduces."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        pooling = json.loads((folder / next(m["path"] for m in modules
                                             if m["type"].endswith("Pooling")) / "config.json")
                             .read_text())
    except (OSError, ValueError, KeyError, StopIteration):
        kinds, pooling = [], {}
    modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
    if kinds[:2] != ["Transformer", "Pooling"] or modes != ["pooling_mode_mean_tokens"] \
            or set(kinds[2:]) - {"Normalize"}:
        raise ConfigError(f"{ARGS}.backend: onnx exports models made of a Transformer with mean "
                          f"pooling (and Normalize); {folder} has {kinds or 'no modules.json'} "
                          f"({', '.join(modes) or 'no pooling'}); use backend: torch")
    return int(pooling["word_embedding_dimension"])


def export_key(folder: Path, quantize: str) -> str:
    """What the export depends on: every file of the model, the quantization, versions."""
    digest = hashlib.sha256()
    digest.update(_folder_sha256(folder).encode())
    versions = {name: _version(name) for name in ("torch", "onnx", "onnxruntime")}
    digest.update(json.dumps({"quantize": quantize, "format": FORMAT, **versions},
                             sort_keys=True).encode())
    return digest.hexdigest()[:24]


def exported_model(folder: Path, name: str, quantize: str) -> Path:
    """The checked ONNX file for the model in `folder`, exported on first use (once across
    processes: the others wait on a lock), rebuilt if damaged.

    Raises:
        ConfigError: onnxruntime or onnx missing, or the export or quantization failed
            (nothing is left in the cache then).
    """
    _require("onnxruntime")
    target = settings.cache_root() / "onnx" / _safe(name) / f"{export_key(folder, quantize)}-{quantize}"
    if _valid(target):
        return target / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.with_suffix(".lock")):
        if _valid(target):  # another process built it while this one waited
            return target / "model.onnx"
        if target.exists():
            log.warning("the ONNX export in %s is damaged or incomplete: building it again", target)
            shutil.rmtree(target)
        temp = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
        try:
            _build(folder, temp, quantize)
            os.rename(temp, target)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"{ARGS}: cannot export '{name}' to ONNX with quantize: {quantize} "
                              f"({type(exc).__name__}: {str(exc)[:300]}); use backend: torch, "
                              "or quantize: none") from None
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        log.info("exported %s to ONNX (%s) in %s", name, quantize, target)
    return target / "model.onnx"


class OnnxSentenceModel:
    """Tokenizer + ONNX Runtime session: texts -> normalised mean-pooled embeddings."""

    def __init__(self, folder: Path, model_file: Path, threads: int):
        import onnxruntime as ort
        from transformers import AutoTokenizer
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.max_length = _max_seq_length(folder)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_file), options,
                                            providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.nbytes = model_file.stat().st_size

    def encode(self, texts: Sequence[str], batch_size: int) -> torch.Tensor:
        """[len(texts), dim]; texts sorted by length so each batch pads little."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list = [None] * len(texts)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            encoded = self.tokenizer([texts[i] for i in chunk], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="np")
            feeds = {name: encoded[name].astype("int64") for name in self.inputs}
            vectors = self.session.run(None, feeds)[0]
            for i, row in zip(chunk, vectors):
                out[i] = row
        return torch.from_numpy(np.stack(out)) if out else torch.zeros(0)


class _Pooled(torch.nn.Module):
    """The transformer with mean pooling over real tokens and L2 normalisation."""

    def __init__(self, transformer: torch.nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(mean, dim=-1)


def _build(folder: Path, out: Path, quantize: str) -> None:
    _require("onnx")
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    sample = model.tokenizer(["a short text", "and a longer one to pad against"], padding=True,
                             return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    dynamic = {n: {0: "batch", 1: "tokens"} for n in names}
    path = out / "model.onnx"
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(_Pooled(model[0].auto_model.eval()), tuple(sample[n] for n in names),
                          str(path), input_names=names, output_names=["embedding"],
                          dynamic_axes={**dynamic, "embedding": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic
        full = out / "full.onnx"
        path.rename(full)
        quantize_dynamic(str(full), str(path), weight_type=QuantType.QInt8)
        full.unlink()
    manifest = {"sha256": _file_sha256(path), "bytes": path.stat().st_size, "quantize": quantize}
    (out / "manifest.json").write_text(json.dumps(manifest))  # last: marks the build whole


def _valid(target: Path) -> bool:
    try:
        manifest = json.loads((target / "manifest.json").read_text())
        path = target / "model.onnx"
        return path.stat().st_size == manifest["bytes"] and _file_sha256(path) == manifest["sha256"]
    except (OSError, ValueError, KeyError):
        return False


def _max_seq_length(folder: Path) -> int:
    with contextlib.suppress(OSError, ValueError, KeyError):
        return int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"])
    return 256


def _folder_sha256(folder: Path) -> str:
    """The hash of every file's name and bytes, computed once per process while no file
    changes (size and mtime): the encoder's store and its export both key on it."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    stamp = (str(folder), tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if stamp not in _FOLDER_HASHES:
        digest = hashlib.sha256()
        for path in files:
            digest.update(str(path.relative_to(folder)).encode() + b"\0")
            digest.update(_file_sha256(path).encode())
        _FOLDER_HASHES[stamp] = digest.hexdigest()
    return _FOLDER_HASHES[stamp]


_FOLDER_HASHES: dict[tuple, str] = {}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise missing(module) from None


def missing(module: str) -> ConfigError:
    return ConfigError(f"{ARGS}.backend: onnx needs the '{module}' package, which is not "
                       f"installed; {INSTALL}, or use backend: torch")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[-80:] or "model"
