"""`manage.py build_demo_models`: write the offline demo models into DATA_DIR/models."""
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand
from tqdm import tqdm

from inference.demo import build_demo_chat_model

STEPS = 3


class Command(BaseCommand):
    help = "Build the small random-weight demo models offline (no model hub needed)."

    def add_arguments(self, parser):
        parser.add_argument("--out", default=str(settings.DEMO_MODELS_DIR), help="target folder")
        parser.add_argument("--if-missing", action="store_true", help="do nothing when already built")

    def handle(self, *args, out: str, if_missing: bool, **options):
        target = Path(out) / "demo-chat"
        if if_missing and (target / "config.json").exists():
            self.stdout.write(f"demo models already in {target.parent}")
            return
        with tqdm(total=STEPS, desc="demo-chat", unit="step", file=self.stderr._out) as bar:

            def progress(message: str) -> None:
                bar.set_postfix_str(message)
                bar.update(1)

            build_demo_chat_model(target, progress)
        self.stdout.write(self.style.SUCCESS(f"built demo-chat in {target}"))
