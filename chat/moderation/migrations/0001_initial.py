# ModerationRule moved here from the app "chat" (chat.conversations): their tables keep their names and
# their rows, so this migration only tells Django's model state where they live now (no SQL).

import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('chat', '0007_audit_login_locked'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='ModerationRule',
                    fields=[
                        ('id', models.BigAutoField(primary_key=True, serialize=False)),
                        ('kind', models.CharField(choices=[('keyword', 'Keyword'), ('regex', 'Regular expression')], default='keyword', max_length=16)),
                        ('pattern', models.TextField()),
                        ('category', models.CharField(choices=[('violence', 'Violence'), ('self-harm', 'Self-harm'), ('child-safety', 'Child safety'), ('credentials', 'Credentials'), ('pii', 'Personal data'), ('custom', 'Custom')], default='custom', max_length=32)),
                        ('applies_to', models.CharField(choices=[('input', 'User input'), ('output', 'Model output'), ('both', 'Both')], default='both', max_length=8)),
                        ('enabled', models.BooleanField(default=True)),
                        ('note', models.TextField(blank=True)),
                        ('created_at', models.DateTimeField(default=django.utils.timezone.now, editable=False)),
                        ('updated_at', models.DateTimeField(auto_now=True)),
                    ],
                    options={
                        'verbose_name': 'moderation rule',
                        'db_table': 'chat_moderationrule',
                        'ordering': ['category', 'id'],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
