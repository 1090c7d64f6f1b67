"""The chat app: conversations and messages, pages, the WebSocket consumer."""
