"""`manage.py build_demo_models`: write the offline demo models into DATA_DIR/models."""
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand
from tqdm import tqdm

from inference.demo import BENCH_CONFIG, build_demo_chat_model
from inference.demo_vision import VISION_BUILD_STEPS, build_demo_vision_model

STEPS = 3
BENCH_MODEL = "bench-100m"


class Command(BaseCommand):
    help = "Build the random-weight demo models offline (no model hub needed)."

    def add_arguments(self, parser):
        parser.add_argument("--out", default=str(settings.DEMO_MODELS_DIR), help="target folder")
        parser.add_argument("--if-missing", action="store_true", help="do nothing for models already built")
        parser.add_argument("--bench", action="store_true", help=f"also build {BENCH_MODEL} (~100M parameters)")

    def handle(self, *args, out: str, if_missing: bool, bench: bool, **options):
        chat = Path(out) / "demo-chat"
        self._build(chat, if_missing)
        self._build(Path(out) / "demo-vision", if_missing, builder=build_demo_vision_model, steps=VISION_BUILD_STEPS,
                    tokenizer_from=chat)
        if bench:
            self._build(Path(out) / BENCH_MODEL, if_missing, config=BENCH_CONFIG, tokenizer_from=chat)

    def _build(self, target: Path, if_missing: bool, builder=build_demo_chat_model, steps: int = STEPS,
               **kwargs) -> None:
        if if_missing and (target / "config.json").exists():
            self.stdout.write(f"{target.name} already built in {target.parent}")
            return
        with tqdm(total=steps, desc=target.name, unit="step", file=self.stderr._out) as bar:

            def progress(message: str) -> None:
                bar.set_postfix_str(message)
                bar.update(1)

            builder(target, progress, **kwargs)
        self.stdout.write(self.style.SUCCESS(f"built {target.name} in {target}"))
