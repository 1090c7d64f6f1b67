"""Classifier: the optional local Hugging Face text-classification model that moderates inputs after the rules."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from chat.moderation.rules import ALLOWED, Verdict

log = logging.getLogger(__name__)

_pipelines: dict[str, Any] = {}
_pipelines_lock = threading.Lock()


@dataclass(frozen=True)
class Classifier:
    """A local Hugging Face text-classification model, for inputs only: one forward pass per message is
    fine in the web tier, one per streamed token of an answer is not (outputs rely on the rules).

    The model sees the raw text (it has its own tokenizer), truncated to its maximum length."""

    path: str
    block_labels: tuple[str, ...] = ("toxic",)
    threshold: float = 0.8

    @classmethod
    def from_settings(cls) -> Classifier | None:
        path = str(getattr(settings, "MODERATION_CLASSIFIER_PATH", "") or "")
        if not path:
            return None
        labels = getattr(settings, "MODERATION_CLASSIFIER_BLOCK_LABELS", ["toxic"])
        if isinstance(labels, str):
            labels = [labels]
        threshold = float(getattr(settings, "MODERATION_CLASSIFIER_THRESHOLD", 0.8))
        return cls(path, tuple(labels), threshold)

    def _pipeline(self) -> Any:
        """Loaded on first use and kept for the process; a load failure propagates (no silent fail-open)."""
        with _pipelines_lock:
            if self.path not in _pipelines:
                from transformers import pipeline

                log.info("loading the moderation classifier from %s", self.path)
                _pipelines[self.path] = pipeline("text-classification", model=self.path, device=-1)
            return _pipelines[self.path]

    def check(self, text: str) -> Verdict:
        if not text.strip():
            return ALLOWED
        classify = self._pipeline()
        with _pipelines_lock:  # a fast tokenizer must not be used by two threads at once
            result = classify(text, truncation=True)
        top = result[0] if isinstance(result, list) else result
        label, score = str(top["label"]), float(top["score"])
        blocked = {name.casefold() for name in self.block_labels}
        if label.casefold() in blocked and score >= self.threshold:
            return Verdict(False, "classifier", f"classifier:{label}", label, score)
        return ALLOWED
