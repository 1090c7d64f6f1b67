"""WhiteNoise, able to sit in an async middleware chain.

Under daphne, one sync-only middleware makes Django run the whole chain for every request on its single
sync thread, blocked until the view returns: 48 /v1 requests then waited for each other's authentication,
admission and queueing, about 1.4 s for the last (shared/FACTS.md). Every other middleware here can run
either way; this one looks a path up in a dict, so it can too.
"""
from __future__ import annotations

from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from whitenoise.middleware import WhiteNoiseMiddleware


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(get_response, *args, **kwargs)
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def _static_file(self, request: Any) -> Any:
        return self.find_file(request.path_info) if self.autorefresh else self.files.get(request.path_info)

    def __call__(self, request: Any) -> Any:
        if iscoroutinefunction(self):
            return self._acall(request)
        return super().__call__(request)

    async def _acall(self, request: Any) -> Any:
        static_file = self._static_file(request)
        if static_file is not None:
            return self.serve(static_file, request)
        return await self.get_response(request)
