"""Celery tasks: thin adapters between Message rows (chat.replies) and the engine."""
from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown

from .batching import BatchConfig
from .engine import Engine, GenerationStats, PromptTooLong, SamplingParams
from .loading import ModelCache, ModelLoadError
from .registry import ModelSpec, UnknownModel, all_models, get_model
from .routing import Heartbeat, private_queue

log = logging.getLogger(__name__)
_models = ModelCache()
_engines: dict[ModelSpec, Engine] = {}


def engine_for(spec: ModelSpec) -> Engine:
    """The process-wide engine for a model, loading it on first use."""
    engine = _engines.get(spec)
    if engine is None:
        # The batching manager takes token ids only: vision models answer one request per thread.
        engine = _engines[spec] = Engine(_models.get(spec), spec, None if spec.vision else batch_config())
    return engine


def batch_config() -> BatchConfig | None:
    from django.conf import settings

    if not settings.ENGINE_BATCHING:
        return None
    return BatchConfig(page_size=settings.ENGINE_KV_PAGE_SIZE, num_blocks=settings.ENGINE_KV_BLOCKS,
                       max_batch_tokens=settings.ENGINE_MAX_BATCH_TOKENS)


@shared_task(name="inference.tasks.generate", ignore_result=True)
def generate(message_id: str) -> None:
    """Write the answer for one pending assistant message, streaming it to the conversation."""
    from chat.replies import ReplyWriter, claim

    job = claim(message_id)
    if job is None:
        return
    writer = ReplyWriter(job)
    try:
        spec = get_model(job.model)
        engine = engine_for(spec)
        params = SamplingParams(
            # The conversation may ask for fewer tokens than the operator allows, never more.
            max_new_tokens=min(job.max_tokens or spec.max_new_tokens, spec.max_new_tokens),
            temperature=spec.temperature if job.temperature is None else job.temperature,
            top_p=spec.top_p if job.top_p is None else job.top_p,
        )
        prompt_ids = engine.encode_chat(job.history, params.max_new_tokens, conversation=job.conversation_id)
        writer.start(len(prompt_ids))
        stats = GenerationStats()
        stream = engine.generate(prompt_ids, params, stats)
        for delta in stream:
            if not writer.append(delta.content, delta.reasoning, stats.completion_tokens):
                stream.close()
                break
        else:
            writer.completion_tokens = stats.completion_tokens
            if writer.final_check() and writer.flush():
                writer.done(stats.finish_reason)
                engine.remember_turn(job.conversation_id, job.history, writer.content, prompt_ids, stats)
                return
        # The text was refused: a moderation rule tripped, Stop was pressed, nobody is watching,
        # or the row was deleted.
        if writer.filtered is not None:
            writer.content_filtered()
        elif writer.should_cancel():
            writer.cancelled()
    except (UnknownModel, ModelLoadError, PromptTooLong) as exc:
        writer.fail(str(exc))
    except Exception:
        log.exception("generation of %s failed", message_id)
        try:
            writer.fail("The model failed while writing this answer; the partial answer was kept.")
        except Exception:  # e.g. the database is gone too: the row stays for a later sweep
            log.exception("could not record the failure of %s", message_id)
    finally:
        writer.close()


_heartbeats: list[Heartbeat] = []


@worker_ready.connect
def join_models(sender=None, **kwargs) -> None:
    """Load the models whose queues this worker consumes (so the first answer is not slow),
    then take a private queue per model and announce it, so conversations stick to us."""
    if sender is None:
        return
    # The sender is the worker's consumer; its app knows which queues this worker was given.
    queues = set(sender.app.amqp.queues.consume_from)
    mine = [spec.celery_queue for spec in all_models().values() if spec.celery_queue in queues]
    for spec in all_models().values():
        if spec.celery_queue in mine:
            try:
                engine_for(spec)
            except ModelLoadError:
                pass  # already logged in one line; answers for it fail with the reason
    for queue in mine:
        sender.add_task_queue(private_queue(queue, sender.hostname))
    if mine:
        _heartbeats.append(Heartbeat(sender.hostname, mine).start())


@worker_shutdown.connect
def stop_engines(**kwargs) -> None:
    """The batching loops run in non-daemon threads: stop them, or the worker never exits."""
    while _heartbeats:
        _heartbeats.pop().stop()
    for engine in list(_engines.values()):
        if engine.batcher is not None:
            engine.batcher.stop(timeout=10)
