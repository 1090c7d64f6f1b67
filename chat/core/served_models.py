"""The models this site serves: settings.DEEPSEEK_MODELS parsed once by inference.registry."""
from __future__ import annotations

from functools import lru_cache

from django.conf import settings

from inference.registry import ModelSpec, UnknownModel, parse_models


@lru_cache(maxsize=1)
def _configured(raw_key: str) -> dict[str, ModelSpec]:
    return {spec.name: spec for spec in parse_models(settings.DEEPSEEK_MODELS)}


def all_models() -> dict[str, ModelSpec]:
    """Configured models by name, in settings order (the first is the default)."""
    # Keyed by the settings' repr so tests that override settings see their own models.
    return _configured(repr(settings.DEEPSEEK_MODELS))


def get_model(name: str) -> ModelSpec:
    try:
        return all_models()[name]
    except KeyError:
        raise UnknownModel(f"no model named {name!r} is configured") from None


def default_model() -> ModelSpec:
    return next(iter(all_models().values()))
