"""The web tier's size check loads the tokenizer safely when the first requests come together."""
from __future__ import annotations

import subprocess
import sys


def test_it_loads_the_tokenizer_once_for_concurrent_first_requests(demo_model_path):
    # A fresh interpreter: the race is in transformers' lazy first import, long done in this one.
    script = f"""
import threading
from inference import prompt_check
found = []
def load():
    found.append(prompt_check._tokenizer({str(demo_model_path)!r}))
threads = [threading.Thread(target=load) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
assert len(found) == 8 and all(t is not None for t in found), found
assert len({{id(t) for t in found}}) == 1, "loaded more than once"
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
