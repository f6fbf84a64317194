"""One generation at a time per model: the guard on Llama's methods that use its single sequence."""

from __future__ import annotations

import functools
import inspect

from shaderbay.errors import ModelBusy


def one_at_a_time(method):
    """A Llama method (or generator) that holds the model for its whole run: the scratch buffers, the KV
    cache and the recorded steps serve one sequence, so a second caller gets ModelBusy at once."""

    def claim(self):
        if not self._in_use.acquire(blocking=False):
            raise ModelBusy(
                "this model runs one generation at a time and one is unfinished: finish or close() the other "
                "generator first, or load another model for the other thread (models can share a backend)"
            )

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def held_generator(self, *args, **kwargs):
            claim(self)
            try:
                yield from method(self, *args, **kwargs)
            finally:
                self._in_use.release()

        return held_generator

    @functools.wraps(method)
    def held(self, *args, **kwargs):
        claim(self)
        try:
            return method(self, *args, **kwargs)
        finally:
            self._in_use.release()

    return held
