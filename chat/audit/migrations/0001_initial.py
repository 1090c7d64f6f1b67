# AuditEvent and AuditCheckpoint moved here from the app "chat" (chat.conversations): their tables keep their names and
# their rows, so this migration only tells Django's model state where they live now (no SQL).

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('chat', '0007_audit_login_locked'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='AuditCheckpoint',
                    fields=[
                        ('id', models.BigAutoField(primary_key=True, serialize=False)),
                        ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                        ('cutoff', models.DateTimeField()),
                        ('last_event_id', models.BigIntegerField()),
                        ('last_hash', models.CharField(max_length=64)),
                        ('pruned', models.PositiveIntegerField()),
                    ],
                    options={
                        'db_table': 'chat_auditcheckpoint',
                        'ordering': ['-id'],
                        'get_latest_by': 'id',
                    },
                ),
                migrations.CreateModel(
                    name='AuditEvent',
                    fields=[
                        ('id', models.BigAutoField(primary_key=True, serialize=False)),
                        ('created_at', models.DateTimeField(db_index=True, default=django.utils.timezone.now)),
                        ('actor_name', models.CharField(blank=True, max_length=150)),
                        ('action', models.CharField(choices=[('model_call', 'Model call'), ('signup', 'Sign-up'), ('login', 'Login'), ('login_failed', 'Failed login'), ('login_locked', 'Login locked out'), ('logout', 'Logout'), ('password_change', 'Password change'), ('api_key_created', 'API key created'), ('api_key_revoked', 'API key revoked'), ('api_key_rejected', 'API key rejected'), ('conversation_deleted', 'Conversation deleted'), ('conversation_exported', 'Conversation exported'), ('upload_rejected', 'Upload rejected'), ('moderation_block', 'Moderation block'), ('admin_change', 'Admin change'), ('http_request', 'HTTP request')], db_index=True, max_length=64)),
                        ('ip', models.GenericIPAddressField(blank=True, null=True)),
                        ('user_agent', models.CharField(blank=True, max_length=256)),
                        ('request_id', models.CharField(blank=True, max_length=64)),
                        ('conversation_id', models.UUIDField(blank=True, null=True)),
                        ('message_id', models.UUIDField(blank=True, null=True)),
                        ('model', models.CharField(blank=True, max_length=100)),
                        ('input_sha256', models.CharField(blank=True, max_length=64)),
                        ('output_sha256', models.CharField(blank=True, max_length=64)),
                        ('prompt_tokens', models.PositiveIntegerField(blank=True, null=True)),
                        ('completion_tokens', models.PositiveIntegerField(blank=True, null=True)),
                        ('latency_ms', models.PositiveIntegerField(blank=True, null=True)),
                        ('status', models.PositiveSmallIntegerField(blank=True, null=True)),
                        ('verdict', models.CharField(blank=True, max_length=32)),
                        ('detail', models.JSONField(blank=True, default=dict)),
                        ('prev_hash', models.CharField(max_length=64)),
                        ('hash', models.CharField(max_length=64, unique=True)),
                        ('actor', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        'verbose_name': 'audit event',
                        'db_table': 'chat_auditevent',
                        'ordering': ['-id'],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
