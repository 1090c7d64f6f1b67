# The audit chain becomes keyed (HMAC-SHA256 with AUDIT_CHAIN_KEY) and covers every field: existing rows are
# marked chain_scheme=1 and still verify by the unkeyed rule; a user's deletion no longer nulls `actor` (it is
# hashed now), so the column loses its foreign-key constraint. And the action that marks suppressed anonymous events.

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('audit', '0001_initial'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name='auditevent',
            name='chain_scheme',
            field=models.PositiveSmallIntegerField(choices=[(1, 'SHA-256, unkeyed (before the key)'), (2, 'HMAC-SHA256 with AUDIT_CHAIN_KEY')], default=1),
        ),
        migrations.AlterField(
            model_name='auditevent',
            name='action',
            field=models.CharField(choices=[('model_call', 'Model call'), ('signup', 'Sign-up'), ('login', 'Login'), ('login_failed', 'Failed login'), ('login_locked', 'Login locked out'), ('logout', 'Logout'), ('password_change', 'Password change'), ('api_key_created', 'API key created'), ('api_key_revoked', 'API key revoked'), ('api_key_rejected', 'API key rejected'), ('conversation_deleted', 'Conversation deleted'), ('conversation_exported', 'Conversation exported'), ('upload_rejected', 'Upload rejected'), ('moderation_block', 'Moderation block'), ('admin_change', 'Admin change'), ('http_request', 'HTTP request'), ('audit_suppressed', 'Audit events suppressed')], db_index=True, max_length=64),
        ),
        migrations.AlterField(
            model_name='auditevent',
            name='actor',
            field=models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to=settings.AUTH_USER_MODEL),
        ),
    ]
