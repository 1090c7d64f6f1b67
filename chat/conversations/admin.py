"""Admin views of conversations and messages (read-mostly, for operators)."""
from django.contrib import admin

from chat.conversations.models import Conversation, Message


class MessageInline(admin.TabularInline):
    model = Message
    fields = ("position", "role", "status", "finish_reason", "completion_tokens", "content")
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("id", "user", "title", "model", "updated_at")
    list_filter = ("model",)
    search_fields = ("title", "user__username")
    readonly_fields = ("id", "created_at")
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("id", "conversation", "role", "status", "finish_reason", "completion_tokens", "created_at")
    list_filter = ("status", "role")
    readonly_fields = ("id", "created_at")
