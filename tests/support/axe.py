"""axe-core, "from npm" without npm: the registry's tarball, checked against its published integrity.

The script is fetched once into the data folder (`<DATA_DIR>/axe-core-<version>/axe.min.js`), so only a
fresh machine needs the network. `run_axe(page)` injects it into a Playwright page and returns the
serious and critical violations, reduced to what a failing assertion needs to say.
"""
from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from django.conf import settings

AXE_VERSION = "4.14.1"
AXE_TARBALL = f"https://registry.npmjs.org/axe-core/-/axe-core-{AXE_VERSION}.tgz"
# The "integrity" field of the registry's metadata for this version (sha512, base64).
AXE_INTEGRITY = "sha512-FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ=="
SERIOUS = ("serious", "critical")


def _cache_path() -> Path:
    return Path(settings.DATA_DIR) / f"axe-core-{AXE_VERSION}" / "axe.min.js"


def _download() -> bytes:
    with urllib.request.urlopen(AXE_TARBALL, timeout=60) as response:
        tarball = response.read()
    algorithm, _, expected = AXE_INTEGRITY.partition("-")
    actual = base64.b64encode(hashlib.new(algorithm, tarball).digest()).decode()
    if actual != expected:
        raise RuntimeError(f"{AXE_TARBALL} failed its integrity check: expected {AXE_INTEGRITY}, "
                           f"got {algorithm}-{actual}; refusing to use it")
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        member = archive.extractfile("package/axe.min.js")
        if member is None:
            raise RuntimeError(f"{AXE_TARBALL} has no package/axe.min.js")
        return member.read()


def axe_source() -> str:
    """The text of axe.min.js for axe-core AXE_VERSION, downloaded and verified on first use."""
    path = _cache_path()
    if not path.exists():
        script = _download()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written next to its final name, then renamed: a concurrent reader never sees half a file.
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".axe.min.js.")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(script)
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    return path.read_text(encoding="utf-8")


RUN_AXE = """
async () => {
  const results = await axe.run(document, {resultTypes: ['violations']});
  return results.violations.map(v => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.map(n => ({target: n.target.map(String).join(' '), impact: n.impact, summary: n.failureSummary})),
  }));
}
"""


def run_axe(page) -> list[dict]:
    """The serious and critical axe violations on `page` now: [{id, impact, help, nodes: [selector…]}].

    The page's context must bypass its Content-Security-Policy (`new_context(bypass_csp=True)`):
    the script is added inline."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(content=axe_source())
    violations = page.evaluate(RUN_AXE)
    return [
        {"id": v["id"], "impact": v["impact"], "help": v["help"], "nodes": [n["target"] for n in v["nodes"]]}
        for v in violations
        if v["impact"] in SERIOUS
    ]
