"""Run under torchrun by tests/test_distributed.py: several training jobs in one process group, so a test pays
the processes' start-up once. argv[1] is JSON: {"recipe": NAME, "args": [overrides...], "jobs": [{"args":
[...], "crash_at": K}]}; a job with crash_at dies at step K (after its last checkpoint) and is resumed."""

import json
import sys

from neuratlas.config import parse_overrides
from neuratlas.recipes import get_recipe
from neuratlas.training.trainer import Trainer


def main() -> None:
    spec = json.loads(sys.argv[1])
    for job in spec["jobs"]:
        run = get_recipe(spec["recipe"]).run_config(parse_overrides([*spec["args"], *job["args"]]))
        trainer = Trainer(run)
        if job.get("crash_at"):
            try:
                trainer.fit(crash_at=job["crash_at"])
            except KeyboardInterrupt:
                pass
            trainer = Trainer(run)
            trainer.fit(resume=trainer.run_dir)
        else:
            trainer.fit()


if __name__ == "__main__":
    main()
