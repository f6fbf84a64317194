"""Writing a converted model so that no reader ever sees it half-written: files appear whole, and a
whole output folder is built beside its destination and moved into place only once complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

from shaderbay.errors import ConversionError

# What an output folder may already hold to be replaced: a checkpoint (a previous conversion, say).
# Anything else makes the conversion refuse that folder rather than delete someone's files.
_REPLACEABLE = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.json",
    "chat_template.jinja",
    "*.safetensors",
    "model.safetensors.index.json",
)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def check_replaceable(out: Path) -> None:
    """Refuse an output path that is a file, or a folder holding anything but a checkpoint's files."""
    if out.exists() and not out.is_dir():
        raise ConversionError(f"{str(out)!r} exists and is not a directory; pass a new or empty output directory")
    if out.is_dir():
        for p in out.iterdir():
            if not p.is_file() or not any(fnmatch(p.name, pattern) for pattern in _REPLACEABLE):
                raise ConversionError(
                    f"{str(out)!r} holds {p.name!r}, which is not part of a model checkpoint, and converting "
                    "replaces the whole directory; pass a new or empty output directory"
                )


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` to write into; it replaces ``out`` when the block succeeds
    and is removed when it fails, leaving an existing ``out`` untouched."""
    check_replaceable(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the output is an ordinary directory
    except OSError as e:
        raise ConversionError(f"cannot create the output directory {str(out)!r} ({e}); choose a writable place") from e
    try:
        yield tmp
        _replace_dir(tmp, out)
    except OSError as e:
        raise ConversionError(f"cannot write the output directory {str(out)!r} ({e}); check free space") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.rename(tmp, out)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    try:
        os.rename(out, trash / "old")
        try:
            os.rename(tmp, out)
        except OSError:
            os.rename(trash / "old", out)  # put the old one back: a failed conversion changes nothing
            raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)
