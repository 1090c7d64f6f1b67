"""ASGI entry point: HTTP goes to Django, WebSockets to the chat consumers."""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "deepseek_web.settings")
# Django must be set up before the routing (and through it the models) is imported.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chat.conversations.routing import websocket_urlpatterns  # noqa: E402
from chat.conversations.socket_origin import SameOriginValidator  # noqa: E402
from chat.core.outage import SocketOutageGuard  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # The guard closes a handshake with 4503 when the session or user cannot be read (database down);
        # the validator refuses one from a page of any other origin (scheme, host and port).
        "websocket": SocketOutageGuard(
            SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))),
    }
)
