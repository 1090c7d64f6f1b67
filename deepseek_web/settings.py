"""Django settings, all read from the environment (see README's settings table)."""
from __future__ import annotations

import datetime
import importlib.util
import os
import secrets
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from chat.core.env import env_bool, env_choice, env_float, env_int, env_json, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
# Everything the site writes at run time (SQLite DB, secret key, demo models) lives here, outside git.
DATA_DIR = Path(env_str("DATA_DIR", str(BASE_DIR / "var"))).resolve()


def _dev_secret_key() -> str:
    """A per-checkout key generated once and kept in DATA_DIR, so sessions survive restarts.

    The file is created readable by its owner only (O_EXCL, mode 600) before the key is written, so
    the key is never in a file others may read, not even for a moment; a failed write leaves no file."""
    path = DATA_DIR / "secret_key"
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    try:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(50))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path.read_text().strip()


# "production": HTTPS-only cookies, HSTS, the SSL redirect, hashed static files, and no made-up
# SECRET_KEY or ALLOWED_HOSTS (README: "Production mode").
DJANGO_ENV = env_choice("DJANGO_ENV", "development", ("development", "production"))
PRODUCTION = DJANGO_ENV == "production"


def _required(name: str) -> str:
    value = env_str(name, "")
    if not value:
        raise ImproperlyConfigured(f"{name} must be set when DJANGO_ENV=production")
    return value


if PRODUCTION:
    # A generated key would differ between the web and worker containers and vanish with them.
    SECRET_KEY = _required("SECRET_KEY")
    _required("ALLOWED_HOSTS")
    ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [])
else:
    SECRET_KEY = env_str("SECRET_KEY", "") or _dev_secret_key()
    ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
DEBUG = env_bool("DEBUG", False)
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "channels",
    "csp",
    # One app per concern, lowest layer first (DESIGN.md "Layout"); chat.conversations keeps the label "chat".
    "chat.core",
    "chat.images",
    "chat.moderation",
    "chat.audit",
    "chat.accounts",
    "chat.conversations",
    "chat.api",
    "chat.worker",
]
# Load suites and benchmarks: outside production only (the Docker image does not even carry them).
if not PRODUCTION and importlib.util.find_spec("chat.devtools") is not None:
    INSTALLED_APPS.append("chat.devtools")

MIDDLEWARE = [
    # First, so every later middleware and the view log with the request's id.
    "chat.core.log_context.RequestIdMiddleware",
    # A database outage in a view answers 503 (one raised in a middleware reaches handler500, urls.py).
    "chat.core.outage.DatabaseOutageMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # WhiteNoise, able to run in an async chain: every middleware here can, so /v1's async views are not
    # run on Django's one sync thread (chat/core/static_files.py).
    "chat.core.static_files.StaticFilesMiddleware",
    # Outside the sessions: once a request's sessions are saved, tells open chat sockets of the sessions it
    # ended, and lets a session cycled by a password change keep its sockets (chat/accounts/session_epochs.py).
    "chat.accounts.session_epochs.SessionSuccessionMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    # Before CSRF, whose check parses a form body: uploads and imports past their cap are refused unread.
    "chat.core.body_limits.BodyLimitMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "chat.audit.middleware.AuditMiddleware",
    "chat.conversations.middleware.ModerationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    # Last, as django-axes asks: it turns a locked-out sign-in into the lockout page.
    "axes.middleware.AxesMiddleware",
]

# A strict Content-Security-Policy: no inline script or style anywhere (the pages' JavaScript
# and CSS are files; server data reaches scripts as JSON in <script type="application/json">).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:", "blob:"],
        "connect-src": [SELF],  # same-origin ws:/wss: included
        "font-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

if PRODUCTION:
    # TLS ends at a proxy in front, which must set X-Forwarded-Proto (overwriting any value the
    # client sent, or a client could claim HTTPS).
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    # Docker and Kubernetes probes reach the container directly, over plain HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 365 * 24 * 3600, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
    if not SECURE_HSTS_PRELOAD:
        # Preloading binds the whole domain to HTTPS in browsers for months: an owner's choice,
        # so leaving it off is not a deployment mistake for `check --deploy` to flag.
        SILENCED_SYSTEM_CHECKS = ["security.W021"]

ROOT_URLCONF = "deepseek_web.urls"
ASGI_APPLICATION = "deepseek_web.asgi.application"
WSGI_APPLICATION = "deepseek_web.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "chat.core.context_processors.appearance",
            ],
        },
    },
]

# --- Database: SQLite file by default, anything dj-database-url reads through DATABASE_URL.
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'db.sqlite3'}"), conn_max_age=0
    )
}
_SQLITE = DATABASES["default"]["ENGINE"] in ("django.db.backends.sqlite3", "deepseek_web.sqlite")
# Connections kept between requests and tasks: opening one (with its PRAGMAs) cost more than the queries of
# a chat message. SQLite keeps them by default; on PostgreSQL each web and worker thread would hold one (a
# worker has a thread per answer in flight), so it opens one per request unless told (use a pooler).
DATABASES["default"]["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 600 if _SQLITE else 0, minimum=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if _SQLITE:
    # Writers take turns without SQLite's sleeping retries (deepseek_web/sqlite/base.py).
    DATABASES["default"]["ENGINE"] = "deepseek_web.sqlite"
    # Web and worker threads write concurrently: WAL lets readers go on, IMMEDIATE avoids
    # lock-upgrade deadlocks, and the timeout waits for the writer instead of failing.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file (not :memory:) so the browser tests' server process and worker threads share it.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test-db.sqlite3")}
else:
    # Named explicitly: Channels' live-server process otherwise prefixes "test_" a second time.
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# django-axes checks every sign-in first (it needs the request passed to authenticate()).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# --- Sign-in throttling (django-axes): AXES_FAILURE_LIMIT failed passwords for one username from
# one address lock that pair out for the cool-off; a successful sign-in resets the count.
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = datetime.timedelta(minutes=env_int("AXES_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# Attempts refused during a lockout do not extend it, so the owner gets in when the cool-off ends
# whatever a guesser keeps sending (the refused attempts are still audited as failed logins).
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# The audit log already records every sign-in; axes' own access log would be a second copy.
AXES_DISABLE_ACCESS_LOG = True
# The login page with a translated message and status 429, not axes' bare text.
AXES_LOCKOUT_CALLABLE = "chat.accounts.lockout.lockout_response"
# The same client address the audit log records (AUDIT_TRUSTED_PROXY_COUNT).
AXES_CLIENT_IP_CALLABLE = "chat.accounts.lockout.client_ip"
# Sign-up flooding: accounts one client address may create per hour (0 = no limit), counted in Redis.
SIGNUPS_PER_IP_PER_HOUR = env_int("SIGNUPS_PER_IP_PER_HOUR", 10, minimum=0)
# Who may make an account: anyone (open), anyone but staff approve it before it signs in (approval),
# or only staff, in the admin (closed).
SIGNUP_MODE = env_choice("SIGNUP_MODE", "open", ("open", "approval", "closed"))

LANGUAGE_CODE = env_str("LANGUAGE_CODE", "en")
# The UI's languages; the choice is remembered in the django_language cookie (LocaleMiddleware).
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "locale"]
LANGUAGE_COOKIE_AGE = 365 * 24 * 3600
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(DATA_DIR / "staticfiles"))).resolve()
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns at start-up when it is missing
# Development serves straight from the source folders, so a dev run needs no collectstatic step.
# Production serves what `collectstatic` wrote: hashed names (cached for ever) and compressed copies.
WHITENOISE_USE_FINDERS = not PRODUCTION
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage" if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage",
    },
}

# --- Uploaded images: Django storage (set STORAGES["default"] for S3-style backends). Never
# served as static files: only the owner gets them, through chat.conversations.views.attachment_file.
MEDIA_ROOT = DATA_DIR / "media"
MEDIA_URL = "/media/"  # not routed; files go through the authorized view
ATTACHMENT_MAX_BYTES = env_int("ATTACHMENT_MAX_BYTES", 10 * 1024 * 1024, minimum=1024)
ATTACHMENT_MAX_PIXELS = env_int("ATTACHMENT_MAX_PIXELS", 40_000_000, minimum=1)
ATTACHMENTS_PER_MESSAGE = env_int("ATTACHMENTS_PER_MESSAGE", 4, minimum=1)
ATTACHMENTS_PER_USER = env_int("ATTACHMENTS_PER_USER", 1000, minimum=1)
# API image_url parts with http(s) URLs: refused unless enabled (the server would fetch them).
REMOTE_IMAGES_ENABLED = env_bool("REMOTE_IMAGES_ENABLED", False)
REMOTE_IMAGES_TIMEOUT = env_float("REMOTE_IMAGES_TIMEOUT", 10.0, minimum=0.1)
ATTACHMENT_BYTES_PER_USER = env_int("ATTACHMENT_BYTES_PER_USER", 1024 * 1024 * 1024, minimum=1024)
# Per user (0 = no limit): uploads a minute, and images being decoded at once, uploads and /v1 together
# (chat/conversations/image_work.py; one 40-megapixel image takes ~0.5 GB while it is processed).
UPLOADS_PER_MINUTE = env_int("UPLOADS_PER_MINUTE", 30, minimum=0)
IMAGE_PROCESSING_PER_USER = env_int("IMAGE_PROCESSING_PER_USER", 2, minimum=0)
# Pixels (as headers declare them, charged before decoding) one user's uploads and /v1 images may have a minute
# together: what bounds the CPU a user spends on image work (~1.7 s per 40 MP here); 0 = no limit.
IMAGE_PIXELS_PER_MINUTE = env_int("IMAGE_PIXELS_PER_MINUTE", 200_000_000, minimum=0)
# What one answer may look at (chat/conversations/image_budget.py): /v1 refuses more, the chat keeps the newest.
IMAGES_PER_REQUEST = env_int("IMAGES_PER_REQUEST", 8, minimum=1)
# Declared width × height of those images together: eight 12-megapixel phone photos fit.
IMAGE_PIXELS_PER_REQUEST = env_int("IMAGE_PIXELS_PER_REQUEST", 100_000_000, minimum=1)
# Images one conversation may hold (each send is refused past it).
IMAGES_PER_CONVERSATION = env_int("IMAGES_PER_CONVERSATION", 100, minimum=1)

# --- Redis: one URL for the channel layer and the Celery broker.
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")

CHANNEL_LAYERS = {
    "default": {
        # The core RedisChannelLayer drops messages past its per-channel capacity under load;
        # the pub/sub layer lost none in the same runs (shared/FACTS.md).
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {
            # redis-py 8 closes sockets idle for 5 s by default; subscribers sit idle for long.
            "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
        },
    }
}

# --- Celery (read by deepseek_web/celery.py with namespace="CELERY").
CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Must exceed the longest generation, or a still-running task is delivered a second time.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=60)}
CELERY_TASK_DEFAULT_QUEUE = "default"
# Periodic work (the run command's worker embeds the scheduler; docker runs `celery beat`): audit
# retention and API history, daily. The one schedule: everything else reads it from here.
CELERY_BEAT_SCHEDULE = {
    "prune-audit-events": {"task": "chat.audit.prune_audit_events", "schedule": 24 * 3600},
    "prune-api-history": {"task": "chat.api_completions.prune_api_history", "schedule": 24 * 3600},
}
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
# A worker exits (so its supervisor restarts it) when Redis has been unreachable this long, or when Redis
# answers but the worker's own consumer has not answered a control ping for this long (chat/worker/watchdog.py).
WORKER_BROKER_GRACE_SECONDS = env_float("WORKER_BROKER_GRACE_SECONDS", 30.0, minimum=1.0)
WORKER_CONSUMER_GRACE_SECONDS = env_float("WORKER_CONSUMER_GRACE_SECONDS", 60.0, minimum=1.0)

# --- Audit log and moderation (chat/audit/record.py, chat/moderation/moderator.py).
AUDIT_RETENTION_DAYS = env_int("AUDIT_RETENTION_DAYS", 365, minimum=1)
AUDIT_TRUSTED_PROXY_COUNT = env_int("AUDIT_TRUSTED_PROXY_COUNT", 0, minimum=0)
# The audit chain's HMAC key, kept outside the database; empty: derived from SECRET_KEY (chat/audit/chain.py).
AUDIT_CHAIN_KEY = env_str("AUDIT_CHAIN_KEY", "")
# Audit rows per client address per minute for rejected API keys and anonymous requests; past it, one
# "suppressed" count per minute (chat/audit/record.py). 0 = no limit.
AUDIT_ANONYMOUS_EVENTS_PER_MINUTE = env_int("AUDIT_ANONYMOUS_EVENTS_PER_MINUTE", 30, minimum=0)
MODERATION_ENABLED = env_bool("MODERATION_ENABLED", True)
MODERATION_CLASSIFIER_PATH = env_str("MODERATION_CLASSIFIER_PATH", "")
# Staff edits to rules in the admin reach every process within this many seconds.
MODERATION_RULES_TTL = env_float("MODERATION_RULES_TTL", 5.0, minimum=0.0)
# The time one regex rule may take on one text or stream step; past it the rule counts as a match (fail closed).
MODERATION_REGEX_TIMEOUT_MS = env_int("MODERATION_REGEX_TIMEOUT_MS", 50, minimum=1)

# --- Chat and models.
DEMO_MODELS_DIR = DATA_DIR / "models"
# A JSON list of model entries (README: "Models"); the default serves the offline demo model.
DEEPSEEK_MODELS = env_json(
    "DEEPSEEK_MODELS",
    [
        {
            "name": "deepseek-chat",
            "path": str(DEMO_MODELS_DIR / "demo-chat"),
            "quantization": "none",
            "max_context": 2048,
            "max_new_tokens": 96,
            "demo": True,
        },
        {
            "name": "deepseek-vl",
            "path": str(DEMO_MODELS_DIR / "demo-vision"),
            "quantization": "none",
            "max_context": 2048,
            "max_new_tokens": 96,
            "vision": True,
            "demo": True,
        },
    ],
)
# Continuous batching in the worker (transformers' ContinuousBatchingManager) and its KV budget.
ENGINE_BATCHING = env_bool("ENGINE_BATCHING", True)
ENGINE_KV_BLOCKS = env_int("ENGINE_KV_BLOCKS", 2048, minimum=16)
ENGINE_KV_PAGE_SIZE = env_int("ENGINE_KV_PAGE_SIZE", 32, minimum=1)
ENGINE_MAX_BATCH_TOKENS = env_int("ENGINE_MAX_BATCH_TOKENS", 1024, minimum=16)
# Admission by capacity: the answers one worker's engine writes at once (the batch; more wait in the engine's
# queue, not in Celery's), and those generated one at a time beside it (seeded requests, images).
ENGINE_MAX_SEQUENCES = env_int("ENGINE_MAX_SEQUENCES", 128, minimum=1)
ENGINE_SOLO_SEQUENCES = env_int("ENGINE_SOLO_SEQUENCES", 4, minimum=1)
# Celery's pool only holds answers while they wait on the engine, so it is sized by the engine's capacity
# (plus a few threads for periodic jobs), not the other way round.
CELERY_WORKER_CONCURRENCY = env_int("WORKER_CONCURRENCY", ENGINE_MAX_SEQUENCES + ENGINE_SOLO_SEQUENCES + 2,
                                    minimum=1)
MAX_PROMPT_CHARS = env_int("MAX_PROMPT_CHARS", 16000, minimum=1)
# How often a worker saves its growing answers (all in one transaction) and publishes the text since the last
# save: STREAM_FLUSH_SECONDS while it writes up to 8 answers, longer in proportion beyond, at most
# STREAM_FLUSH_MAX_SECONDS (chat/worker/tick_writer.py). An answer's first text goes out at once.
STREAM_FLUSH_SECONDS = env_float("STREAM_FLUSH_SECONDS", 0.05, minimum=0.0)
STREAM_FLUSH_MAX_SECONDS = env_float("STREAM_FLUSH_MAX_SECONDS", 0.5, minimum=0.0)
# An answer nobody has watched (no open socket on its conversation) for this long is cancelled.
ABANDONED_AFTER_SECONDS = env_float("ABANDONED_AFTER_SECONDS", 60.0, minimum=0.1)
# Socket frames a client may send in a burst, and how many per second refill the burst.
# Per user, across tabs and conversations (0 = no limit): answers being written at once, and chat
# messages (sends and regenerations) per minute (chat/conversations/message_limits.py).
CHAT_ACTIVE_ANSWERS_PER_USER = env_int("CHAT_ACTIVE_ANSWERS_PER_USER", 4, minimum=0)
CHAT_MESSAGES_PER_MINUTE = env_int("CHAT_MESSAGES_PER_MINUTE", 20, minimum=0)
# Conversation imports one user may try per hour, counted before the upload is parsed (0 = no limit).
IMPORTS_PER_USER_PER_HOUR = env_int("IMPORTS_PER_USER_PER_HOUR", 20, minimum=0)
# Tokens (prompt and answer) one user's chat answers may spend per UTC day (0 = no limit); each answer
# holds its most up front and gives back what it did not spend (chat/accounts/usage.py).
CHAT_TOKENS_PER_DAY = env_int("CHAT_TOKENS_PER_DAY", 1_000_000, minimum=0)
SOCKET_FRAME_BURST = env_int("SOCKET_FRAME_BURST", 20, minimum=1)
SOCKET_FRAMES_PER_SECOND = env_float("SOCKET_FRAMES_PER_SECOND", 2.0, minimum=0.01)
# A socket that goes on sending after this many refusals in a row (rate_limited, each answered with an error
# frame: a page stops at the first) is closed with 4008, so a flood costs a reconnect, not a frame each (0 = never).
SOCKET_REFUSALS_BEFORE_CLOSE = env_int("SOCKET_REFUSALS_BEFORE_CLOSE", 50, minimum=0)
# Chat sockets open at once per user (across processes; the next is closed with 4429) and per web process
# (the next is closed with 4503, try later); 0 = no limit (chat/conversations/socket_slots.py).
SOCKETS_PER_USER = env_int("SOCKETS_PER_USER", 20, minimum=0)
SOCKETS_PER_PROCESS = env_int("SOCKETS_PER_PROCESS", 2000, minimum=0)
# An open socket re-reads its session at least this often, besides whenever a logout, password change or
# deactivation of its user bumps the session epoch (chat/accounts/session_epochs.py).
SESSION_RECHECK_SECONDS = env_float("SESSION_RECHECK_SECONDS", 60.0, minimum=1.0)
# `resume` re-reads and renders a whole answer: its own, smaller bucket per socket (burst, refills per second).
SOCKET_RESUME_BURST = env_int("SOCKET_RESUME_BURST", 5, minimum=1)
SOCKET_RESUMES_PER_SECOND = env_float("SOCKET_RESUMES_PER_SECOND", 0.5, minimum=0.01)
# Rendering answers (chat/conversations/rendering.py): past RENDER_MAX_CHARS of text or RENDER_MAX_HTML_CHARS
# of HTML a message shows as plain text with a notice; RENDER_CACHE_BYTES bounds the per-process render cache.
RENDER_MAX_CHARS = env_int("RENDER_MAX_CHARS", 50_000, minimum=1)
RENDER_MAX_HTML_CHARS = env_int("RENDER_MAX_HTML_CHARS", 500_000, minimum=1)
RENDER_CACHE_BYTES = env_int("RENDER_CACHE_BYTES", 64 * 1024 * 1024, minimum=0)
# A conversation page (and each "earlier messages" fetch) carries at most this many messages of the branch on
# show, and stops adding older ones past this many characters of text and HTML (chat/conversations/windows.py).
CONVERSATION_PAGE_MESSAGES = env_int("CONVERSATION_PAGE_MESSAGES", 50, minimum=1)
CONVERSATION_PAGE_CHARS = env_int("CONVERSATION_PAGE_CHARS", 1_000_000, minimum=1)

# The /v1 API: per-user limits (0 = none), how long a response waits between keep-alive
# comments while its answer is queued, and the largest request body it reads.
API_REQUESTS_PER_MINUTE = env_int("API_REQUESTS_PER_MINUTE", 60, minimum=0)
API_CONCURRENT_REQUESTS = env_int("API_CONCURRENT_REQUESTS", 4, minimum=0)
API_TOKENS_PER_DAY = env_int("API_TOKENS_PER_DAY", 1_000_000, minimum=0)
API_KEEPALIVE_SECONDS = env_float("API_KEEPALIVE_SECONDS", 10.0, minimum=0.05)
# An answer no worker has taken after this long is cancelled and the request answered 503
# (DeepSeek's API closes a connection whose inference has not started after 10 minutes); the workers'
# sweep fails any answer (a chat's too) still untaken shortly after (chat/conversations/lifecycle.py).
API_QUEUE_TIMEOUT_SECONDS = env_float("API_QUEUE_TIMEOUT_SECONDS", 600.0, minimum=1.0)
# A request for a model no live worker serves (workers starting or restarting) waits this long for one,
# with keep-alives when streamed, before its 503 (0 = the 503 at once).
API_WORKER_WAIT_SECONDS = env_float("API_WORKER_WAIT_SECONDS", 30.0, minimum=0.0)
# A /v1 body (base64 images included) past this is refused by its Content-Length, before it is read.
API_MAX_BODY_BYTES = env_int("API_MAX_BODY_BYTES", 8 * 1024 * 1024, minimum=1024)
# Any request body past this is refused by the web server itself, unread (deepseek_web/daphne_server.py): at
# least the largest body a view takes (an upload with its multipart envelope, a /v1 body).
SERVER_MAX_BODY_BYTES = env_int("SERVER_MAX_BODY_BYTES", max(API_MAX_BODY_BYTES, ATTACHMENT_MAX_BYTES) + 1024 * 1024,
                                minimum=max(API_MAX_BODY_BYTES, ATTACHMENT_MAX_BYTES + 64 * 1024))
# API requests are kept (as hidden conversations) this long, then removed by the daily prune.
API_HISTORY_DAYS = env_int("API_HISTORY_DAYS", 7, minimum=0)

# --- Health and metrics: /metrics answers a request bearing METRICS_TOKEN, or one made straight
# (no proxy) from one of these networks; anyone else gets a bare 403.
METRICS_TOKEN = env_str("METRICS_TOKEN", "")


def _networks(name: str, default: list[str]) -> list[str]:
    import ipaddress

    from django.core.exceptions import ImproperlyConfigured

    try:
        return [str(ipaddress.ip_network(cidr, strict=False)) for cidr in env_list(name, default)]
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}: {exc}") from None


METRICS_ALLOWED_NETWORKS = _networks("METRICS_ALLOWED_NETWORKS", ["127.0.0.1/32", "::1/128"])

# `plain` reads well in a terminal (make run); `json` is one object per line for log collectors.
# Either way every record carries the request id of the message it is about (chat/core/log_context.py).
LOG_FORMAT = env_choice("LOG_FORMAT", "plain", ("plain", "json"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "chat.core.log_context.ContextFilter"}},
    "formatters": {
        "plain": {"()": "chat.core.log_context.plain_formatter"},
        "json": {"()": "chat.core.log_context.json_formatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context"]}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        # bitsandbytes logs a line per quantized matmul on CPU.
        "bitsandbytes": {"level": "ERROR"},
        "daphne": {"level": "WARNING"},
        # axes announces its version at INFO in every process and management command.
        "axes.apps": {"level": "WARNING"},
        # transformers' batching manager logs every start and stop at INFO.
        "ContinuousBatchingLogger": {"level": "WARNING"},
    },
}
