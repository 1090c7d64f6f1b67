"""Everything about models: registry, loading, generation, demo models, Celery tasks."""
