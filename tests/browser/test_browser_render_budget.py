"""In Chromium: a long conversation shows its newest messages and fetches earlier ones on request, another
version's text is fetched when it is picked, and an answer past the render cap shows as plain text."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.test import override_settings

from chat.conversations.models import Conversation, Message
from tests.support.browser import BrowserTestCase

TURNS = 6


@override_settings(CONVERSATION_PAGE_MESSAGES=3)
class RenderBudgetTests(BrowserTestCase):
    def build(self, username: str) -> tuple[Conversation, list[Message], Message]:
        """TURNS exchanges; the first question has two answers (the older one off the branch on show), and the
        last answer is past RENDER_MAX_CHARS."""
        user = get_user_model().objects.get(username=username)
        conversation = Conversation.objects.create(user=user, model="deepseek-chat", title="Long")
        position, parent, branch, older = 0, None, [], None
        for turn in range(TURNS):
            position += 1
            question = Message.objects.create(conversation=conversation, position=position, role="user",
                                               content=f"question {turn}", parent=parent)
            if turn == 0:
                position += 1
                older = Message.objects.create(conversation=conversation, position=position, role="assistant",
                                               content="the **older** version", parent=question)
            position += 1
            huge = turn == TURNS - 1
            content = "```python\nx = '<b>'\n```\n" * 5000 if huge else f"answer **{turn}**"
            parent = Message.objects.create(conversation=conversation, position=position, role="assistant",
                                            content=content, parent=question)
            branch += [question, parent]
        Conversation.objects.filter(id=conversation.id).update(current_leaf=parent)
        return conversation, branch, older

    def shown(self) -> list[str]:
        return self.page.eval_on_selector_all("#messages .message", "els => els.map(e => e.dataset.messageId)")

    def test_earlier_messages_and_other_versions_are_fetched_when_asked_for(self):
        page = self.page
        self.sign_up("rita")
        conversation, branch, older = self.build("rita")
        page.goto(f"{self.live_server_url}/c/{conversation.id}/")
        page.wait_for_selector("body[data-socket=open]")
        assert self.shown() == [str(m.id) for m in branch[-3:]]
        # The huge answer: escaped plain text with the notice, no highlighting.
        last = page.locator(".message.assistant").last
        assert "too long to format" in last.locator(".render-notice").inner_text()
        assert last.locator(".plain-text").inner_text().startswith("```python\nx = '<b>'")
        assert last.locator(".code-block").count() == 0

        for count in (6, 9, 12):
            page.click(".load-earlier")
            page.wait_for_function("n => document.querySelectorAll('#messages .message').length === n", arg=count)
        assert self.shown() == [str(m.id) for m in branch]
        assert page.locator(".load-earlier").count() == 0
        first_answer = page.locator(".message.assistant").first
        assert first_answer.locator(".content").inner_text() == "answer 0"
        assert first_answer.locator(".version-label").inner_text() == "2/2"

        # The older version was a stub: picking it fetches its text.
        first_answer.locator(".version-prev").click()
        page.wait_for_selector(f'.message[data-message-id="{older.id}"] .content.rendered strong')
        assert self.shown() == [str(branch[0].id), str(older.id)]
        assert page.locator(".message.assistant .content").inner_text() == "the older version"
        assert page.locator("#error").is_hidden()
        self.assert_no_script_ran()
