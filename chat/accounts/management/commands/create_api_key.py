"""`manage.py create_api_key <username> [--name N]`: a new /v1 API key, printed once on its last line."""
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from chat.accounts.api_keys import do_create_key
from chat.core.errors import ChatError


class Command(BaseCommand):
    help = "Create an API key for a user and print it (it is stored only as a hash: copy it now)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="a label to tell the key apart on the API keys page")

    def handle(self, *args, username: str, name: str, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}.")
        if not user.is_active:
            raise CommandError(f"{username!r} is deactivated; their keys would not work.")
        try:
            row, key = do_create_key(user, name)
        except ChatError as exc:
            raise CommandError(exc.message) from None
        self.stderr.write(f"API key {row.prefix}… for {username} (shown once; only its hash is stored):")
        self.stdout.write(key)
