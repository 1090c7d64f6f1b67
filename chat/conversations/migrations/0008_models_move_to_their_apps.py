# ApiKey and ApiUsage moved to chat.accounts, AuditEvent and AuditCheckpoint to chat.audit, ModerationRule
# to chat.moderation. Their tables keep their names and rows: the model state moves (no SQL), and the
# content types are relabelled, so permissions, group grants and admin log entries follow the models.

import django.db.models.deletion
from django.db import migrations, models

MOVED = {
    "apikey": "accounts",
    "apiusage": "accounts",
    "auditevent": "audit",
    "auditcheckpoint": "audit",
    "moderationrule": "moderation",
}


def relabel(apps, schema_editor, forward=True):
    content_type = apps.get_model("contenttypes", "ContentType")
    rows = content_type.objects.using(schema_editor.connection.alias)
    for model, label in MOVED.items():
        old, new = ("chat", label) if forward else (label, "chat")
        if not rows.filter(app_label=old, model=model).exists():
            continue  # a new database: post_migrate creates the content types under their new labels
        # One made under the new label meanwhile (a run of post_migrate) gives way to the old one, which
        # the permissions and log entries point at.
        rows.filter(app_label=new, model=model).delete()
        rows.filter(app_label=old, model=model).update(app_label=new)


def relabel_back(apps, schema_editor):
    relabel(apps, schema_editor, forward=False)


class Migration(migrations.Migration):

    dependencies = [
        ('contenttypes', '0002_remove_content_type_name'),
        ('accounts', '0001_initial'),
        ('audit', '0001_initial'),
        ('moderation', '0001_initial'),
        ('chat', '0007_audit_login_locked'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='conversation',
                    name='api_key',
                    field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL,
                                            related_name='conversations', to='accounts.apikey'),
                ),
                migrations.DeleteModel(name='ApiKey'),
                migrations.DeleteModel(name='ApiUsage'),
                migrations.DeleteModel(name='AuditCheckpoint'),
                migrations.DeleteModel(name='AuditEvent'),
                migrations.DeleteModel(name='ModerationRule'),
            ],
            database_operations=[],
        ),
        migrations.RunPython(relabel, relabel_back),
    ]
