"""The stage record: what a stage's outputs were made from, kept beside them, and the steps every stage takes
with it (train, generate, the score stage in eval/score.py, export).

    record = StageRecord("generate", output_dir / "generate", inputs)   # inputs: pipeline/identity.py
    if record.up_to_date(): return ...      # finished from the same inputs: skipped
    upstream.check_made_from(command)       # a stage that reads another's outputs: made from these inputs?
    record.claim()                          # once the inputs are validated: stage.json (main process first)
    record.finish(summary)                  # <stage>_summary.json, whose presence marks the stage finished

A stage directory holds stage.json with what its outputs depend on (`inputs`) and their hash. The same hash
resumes or skips. A different hash:
- train: refused when the directory holds checkpoints or an adapter (outputs of two configs never mix), naming
  what changed; a directory with none (a run that failed before training) is simply taken over;
- generate: the old predictions are moved to <output>/superseded/generate-<hash>/ and generation starts over,
  so a new test slice regenerates without retraining and no finished work is deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline.atomic import write_json_atomic
from pipeline.errors import ConfigError
from pipeline.runtime import PIPELINE_CODE, provenance

log = logging.getLogger(__name__)

# What counts as a stage's outputs (an empty checkpoints/ folder, which the Trainer makes at once, does not), and
# what happens to them when its inputs change: train's are refused (an adapter is hours of work), generate's are
# set aside under <output>/superseded/.
STAGE_OUTPUTS = {"train": ("checkpoints/checkpoint-*", "adapter", "train_summary.json"),
                 "generate": ("predictions*.jsonl", "generate_summary.json")}
SET_ASIDE = ("generate",)
# The file whose presence (with the same inputs_hash) marks a stage finished, where it is not <stage>_summary.json.
FINISHED = {"score": "report.json"}


@dataclass(frozen=True)
class StageRecord:
    name: str  # train, generate, score, export
    directory: Path  # where its outputs and stage.json are
    inputs: dict  # what its outputs depend on, by content (pipeline/identity.py)
    code: tuple[str, ...] = PIPELINE_CODE  # the code it runs: edits there make its provenance "dirty"

    @property
    def digest(self) -> str:
        return inputs_hash(self.inputs)

    @property
    def summary_path(self) -> Path:
        return Path(self.directory) / FINISHED.get(self.name, f"{self.name}_summary.json")

    def up_to_date(self) -> bool:
        """Finished from these inputs. ConfigError when the directory holds outputs of other inputs that must
        not be replaced (train): before any work, naming what changed."""
        if self.name not in SET_ASIDE and self.recorded_hash() not in (None, self.digest) and self._outputs():
            raise ConfigError(f"{self.directory} holds a {self.name} stage made from other inputs "
                              f"({self._changes()}): set output.dir to a new directory (what is there is kept), "
                              f"or move {self.directory} away to redo the stage there")
        if not self.summary_path.is_file():
            return False
        finished_from = json.loads(self.summary_path.read_text(encoding="utf-8")).get("inputs_hash")
        # score and export record their inputs in their summary alone; train and generate in stage.json too, which
        # a run with other inputs rewrites before it replaces the summary
        claimed = self.name not in STAGE_OUTPUTS or self.recorded_hash() == self.digest
        return claimed and finished_from == self.digest

    def check_made_from(self, command: str) -> None:
        """For a stage that reads this one's outputs: ConfigError naming what changed when they were made from
        other inputs than these (the current config, data, model...), and the command that redoes them."""
        if self.recorded_inputs() is None:
            raise ConfigError(f"{self.directory} records no inputs (made by an older version?): rerun {command}")
        if differences(self.recorded_inputs(), self.inputs):
            raise ConfigError(f"the {self.name} outputs in {self.directory} were made from other inputs "
                              f"({self._changes()}): rerun {command} with this config")

    def claim(self) -> None:
        """Once the stage's inputs are validated: records them in stage.json. A generate directory made from other
        inputs has its outputs moved aside first; a train directory's are refused (up_to_date)."""
        self.up_to_date()
        recorded = self.recorded_hash()
        if recorded == self.digest:
            return
        if recorded is not None and self._outputs():  # generate: keep the old predictions, start over
            aside = Path(self.directory).parent / "superseded" / f"{self.name}-{recorded}"
            aside.mkdir(parents=True, exist_ok=True)
            for path in self._outputs() + [Path(self.directory) / "stage.json"]:
                path.rename(aside / path.name)
            log.warning("%s: its inputs changed since %s was made; its outputs were moved to %s", self.name,
                        self.directory, aside)
        Path(self.directory).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(self.directory) / "stage.json",
                          {"stage": self.name, "inputs_hash": self.digest, "inputs": self.inputs})

    def finish(self, summary: dict) -> Path:
        """Writes the stage's summary (its presence marks the stage finished) with the inputs hash it was made
        from and its provenance (commit, packages, hardware)."""
        write_json_atomic(self.summary_path, {"inputs_hash": self.digest, **summary,
                                              "provenance": provenance(self.code)})
        return self.summary_path

    def recorded_inputs(self) -> dict | None:
        marker = Path(self.directory) / "stage.json"
        return json.loads(marker.read_text(encoding="utf-8")).get("inputs") if marker.is_file() else None

    def recorded_hash(self) -> str | None:
        """The inputs hash the directory was made from; None when it was never claimed; "older-version" for a
        stage.json of a version that recorded config keys only (its outputs are not taken for this version's)."""
        marker = Path(self.directory) / "stage.json"
        if not marker.is_file():
            return None
        return json.loads(marker.read_text(encoding="utf-8")).get("inputs_hash") or "older-version"

    def _changes(self) -> str:
        """What differs between the recorded inputs and these, the first four named."""
        recorded = self.recorded_inputs()
        if recorded is None:
            return "made by an older version"
        changed = differences(recorded, self.inputs)
        return "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")

    def _outputs(self) -> list[Path]:
        return [path for pattern in STAGE_OUTPUTS.get(self.name, ()) for path in sorted(
            Path(self.directory).glob(pattern))]


def inputs_hash(inputs: dict) -> str:
    text = json.dumps(inputs, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def differences(recorded: dict, current: dict, prefix: str = "") -> list[str]:
    """Where two inputs differ, as "key: recorded -> current" (long values such as hashes shortened)."""
    found = []
    for key in sorted(set(recorded) | set(current), key=str):
        a, b, name = recorded.get(key), current.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, name + ".")
        elif a != b:
            found.append(f"{name}: {_short(a)} -> {_short(b)}")
    return found


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."
