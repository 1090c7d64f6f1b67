"""Template context every page needs: the colour theme the user picked (or the system's)."""
from __future__ import annotations

from django.http import HttpRequest

THEMES = ("system", "light", "dark")


def appearance(request: HttpRequest) -> dict[str, str]:
    # Read on the server so the first paint has the right colours (no inline script allowed).
    theme = request.COOKIES.get("theme", "system")
    return {"theme": theme if theme in THEMES else "system"}
