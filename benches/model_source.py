"""Where the model bench's weights come from: loadable many times, its files evictable from the page cache."""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from shaderbay.dtypes import BLOCK_DTYPES
from shaderbay.models import synthetic
from shaderbay.models.default import DEFAULT_MODEL_NAME, default_gguf_path, default_model_dir

from .model_settings import Settings
from .shapes import Shape, checkpoint_shape, named_shape


class Source:
    """Where the weights come from, loadable many times; `evict()` drops its files from the page cache."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.tmpdir: Path | None = None
        self.checkpoint: Any = None  # an in-memory synthetic checkpoint
        self.path: Path | None = None
        self.generate_s = 0.0
        self.name = settings.synthetic or (Path(settings.model).name if settings.model else "default model")
        self.wdtype = settings.weights  # a checkpoint's own dtype replaces it in prepare()
        self.shape: Shape | None = named_shape(settings.synthetic) if settings.synthetic else None

    def prepare(self) -> None:
        """Resolve the checkpoint: the default model's directory (converted on first use), or a synthetic
        model written to a temporary safetensors directory (or kept in memory)."""
        s = self.settings
        t0 = time.perf_counter()
        if s.synthetic:
            wdtype = s.weights
            if s.in_memory or wdtype in BLOCK_DTYPES or wdtype in synthetic.MIXES:  # safetensors hold no blocks
                self.checkpoint = synthetic.synthetic_checkpoint(s.synthetic, wdtype, seed=s.seed)
            else:
                self.tmpdir = Path(tempfile.mkdtemp(prefix="shaderbay-bench-"))
                self.path = synthetic.write_checkpoint(s.synthetic, self.tmpdir / s.synthetic, wdtype, seed=s.seed)
                for f in self.files():
                    with open(f, "rb+") as fh:
                        os.fsync(fh.fileno())
            gc.collect()
        else:
            if s.model:
                self.path = Path(s.model).expanduser()
            else:  # the default model's GGUF as shaderbay.load() runs it, or converted to an asked float dtype
                self.path = default_gguf_path() if s.dtype is None else default_model_dir(s.dtype)
                self.name = DEFAULT_MODEL_NAME
            self.shape, self.wdtype = checkpoint_shape(self.path, self.name)
        self.generate_s = time.perf_counter() - t0

    def load_arg(self) -> Any:
        if self.checkpoint is not None:
            return self.checkpoint
        return self.path

    def files(self) -> list[Path]:
        """The checkpoint's files: a GGUF, or a directory's safetensors (none for one in memory)."""
        if self.path is None:
            return []
        return [self.path] if self.path.is_file() else sorted(self.path.glob("*.safetensors"))

    def file_bytes(self) -> int | None:
        if self.path is None:
            return None
        return sum(f.stat().st_size for f in self.files())

    def evict(self) -> bool:
        """Drop the checkpoint's files from the page cache (POSIX_FADV_DONTNEED); False where unsupported."""
        if self.path is None or not hasattr(os, "posix_fadvise"):
            return False
        done = False
        for f in self.files():
            try:
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    done = True
                finally:
                    os.close(fd)
            except OSError:
                pass
        return done

    def cleanup(self) -> None:
        self.checkpoint = None
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
