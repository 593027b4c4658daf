"""Model inputs: one module per input kind (`kind:` in a job's `data.inputs`).

Each module holds the kind's job-file spec (a pydantic model), its vectorized kernel and an
`Encoder` subclass that says which branches it reads, what a read task ships for a slice of
events (dense, or sparse points) and how a worker turns that into the model's tensor. Adding a
kind is adding a module here: the registry below finds it, the job schema accepts it, and the
datasource, the batching and `hepray predict` use it through `encoder_for`.
"""

from __future__ import annotations

import importlib
import operator
import pkgutil
from functools import lru_cache, reduce
from typing import Annotated

from pydantic import Field

from hepray.inputs.base import Encoder
from hepray.inputs.kernels import ArrayLike, Ragged, SparseImages, apply_norm, densify

NOT_KINDS = {"base", "kernels"}


def _encoder_classes() -> dict[str, type[Encoder]]:
    classes = {}
    for module in pkgutil.iter_modules(__path__):
        if module.name in NOT_KINDS:
            continue
        loaded = importlib.import_module(f"{__name__}.{module.name}")
        for value in vars(loaded).values():
            if isinstance(value, type) and issubclass(value, Encoder) and value is not Encoder:
                classes[value.kind] = value
    return dict(sorted(classes.items()))


ENCODERS = _encoder_classes()
# the union of every kind's spec, told apart by `kind`
InputSpec = Annotated[reduce(operator.or_, (cls.spec_class for cls in ENCODERS.values())), Field(discriminator="kind")]


def encoder_for(spec) -> Encoder:
    return ENCODERS[spec.kind](spec)


@lru_cache(maxsize=64)
def encoder_from_json(kind: str, spec_json: str) -> Encoder:
    """An encoder rebuilt from the spec a block carries (workers decode without the job)."""
    cls = ENCODERS[kind]
    return cls(cls.spec_class.model_validate_json(spec_json))


def branches_for(spec) -> set[str]:
    """Branch names the input reads."""
    return encoder_for(spec).branches()


def make_input(spec, arrays: dict[str, ArrayLike]):
    """One slice of events as the model's input: float32 (N, *spec.shape()), norm applied."""
    return encoder_for(spec).dense(arrays)


def make_sparse(spec, arrays: dict[str, ArrayLike]) -> SparseImages:
    """One slice of events as in-window points; `densify` gives make_input's images."""
    return encoder_for(spec).sparse(arrays)


def sparse_supported(spec) -> bool:
    """Whether the input's image is a sum of point values, so its points can travel instead."""
    encoder = encoder_for(spec)
    return encoder.travels_ragged and type(encoder).sparse is not Encoder.sparse


__all__ = [
    "ENCODERS",
    "Encoder",
    "InputSpec",
    "Ragged",
    "SparseImages",
    "apply_norm",
    "branches_for",
    "densify",
    "encoder_for",
    "encoder_from_json",
    "make_input",
    "make_sparse",
    "sparse_supported",
]
