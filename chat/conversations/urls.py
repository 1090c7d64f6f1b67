"""Chat pages."""
from django.urls import path, re_path

from chat.conversations import attachment_views, views

urlpatterns = [
    path("", views.home, name="home"),
    path("c/new/", views.new_conversation, name="new_conversation"),
    path("c/import/", views.import_conversation, name="import_conversation"),
    path("attachments/", attachment_views.upload, name="upload_attachment"),
    path("attachments/<uuid:attachment_id>/", attachment_views.attachment_file, name="attachment_file"),
    path("attachments/<uuid:attachment_id>/thumbnail/", attachment_views.attachment_thumbnail,
         name="attachment_thumbnail"),
    path("c/<uuid:conversation_id>/", views.conversation, name="conversation"),
    path("c/<uuid:conversation_id>/messages/", views.branch_messages, name="branch_messages"),
    path("c/<uuid:conversation_id>/rename/", views.rename, name="rename_conversation"),
    path("c/<uuid:conversation_id>/delete/", views.delete, name="delete_conversation"),
    path("c/<uuid:conversation_id>/settings/", views.update_settings, name="conversation_settings"),
    re_path(r"^c/(?P<conversation_id>[0-9a-f-]{36})/export\.(?P<ext>md|json)$", views.export,
            name="export_conversation"),
]
