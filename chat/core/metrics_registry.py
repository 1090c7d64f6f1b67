"""The process's one Prometheus registry: chat.core.metrics records into it, the worker app adds the
engine's (inference.metrics), and chat.core.metrics_snapshots shares it through Redis."""
from prometheus_client import CollectorRegistry

# A registry of our own rather than the global one: its process and GC collectors describe one
# process, and these values are shown side by side with other processes' (a `process` label each).
REGISTRY = CollectorRegistry(auto_describe=True)
