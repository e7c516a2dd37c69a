"""One ``slimepo iterate`` loop on the tiny model, for test_iterate.py to kill and resume.

    python iterate_worker.py CONFIG_JSON [--die-at POINT]

``CONFIG_JSON`` holds the :class:`~slimepo.iterate.IterateConfig` options. ``--die-at`` ends the
process with ``os._exit(9)`` (no exception handler, no ``finally``, no flush: as a SIGKILL would)
the first time the loop reaches ``POINT``:

- ``eval``: generation health summarized, eval.json not yet written (any round's evaluation);
- ``sampling``: the engine asked for a second batch of answers (the first is on disk);
- ``checkpoint``: a checkpoint just written (training then resumes from it);
- ``before-checkpoint``: a training step done, no checkpoint yet (training starts again);
- ``model-card``: the adapter and merged weights written, the model card (training's last file) not;
- ``round-record``: a round finished, its round.json not written.
"""

import json
import os
import sys
from pathlib import Path


def die() -> None:
    sys.stdout.flush()
    os._exit(9)


def install(point: str) -> None:
    import transformers

    import slimepo.eval.run
    import slimepo.generation.hf
    import slimepo.iterate.run
    import slimepo.train.run

    if point == "eval":
        original = slimepo.eval.run.summarize_health
        slimepo.eval.run.summarize_health = lambda *a, **k: (original(*a, **k), die())
    elif point == "sampling":
        original = slimepo.generation.hf.HFEngine.generate
        calls = []

        def generate(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                die()
            return original(self, *args, **kwargs)

        slimepo.generation.hf.HFEngine.generate = generate
    elif point in ("checkpoint", "before-checkpoint"):
        original = transformers.Trainer._save_checkpoint

        def save(self, *args, **kwargs):
            if point == "before-checkpoint":
                die()
            original(self, *args, **kwargs)
            die()

        transformers.Trainer._save_checkpoint = save
    elif point == "model-card":
        slimepo.train.run.write_model_card = lambda *a, **k: die()
    elif point == "round-record":
        original = slimepo.iterate.run.write_json

        def write(path, value):
            if str(path).endswith("round.json") and value.get("round", 0) > 0:
                die()
            return original(path, value)

        slimepo.iterate.run.write_json = write
    else:
        raise SystemExit(f"unknown point {point}")


def main() -> None:
    from slimepo.iterate import IterateConfig, iterate

    options = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    if "--die-at" in sys.argv:
        install(sys.argv[sys.argv.index("--die-at") + 1])
    iterate(IterateConfig(**options))
    print("finished")


if __name__ == "__main__":
    main()
