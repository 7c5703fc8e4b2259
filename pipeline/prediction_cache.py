"""Predictions kept between runs, one file per model, named by what that model's rows depend on. A base model's rows
are the same for every adapter gated against it: a CI job that keeps this folder (generate.prediction_cache)
between runs generates only the rows of the adapter under test.

    cache = PredictionCache(folder, stage_inputs, device, dtype)  # the generate stage's inputs
    reused = cache.fill(own_file, rows, done)    # each model whose file holds every row: its rows written, in `done`
    cache.keep(merged_rows, skip=reused)         # each model generated here, once the stage merged its rows

A model's key is what the generate stage's inputs hold for that model alone (its config keys, the test ids and
inputs, the base model, the prompt, its adapter: pipeline/identity.generate_inputs), plus what a stage directory
never leaves but a cache shared by machines does: the packages that compute the tokens, the device, its CPU
instruction set or GPU, the dtype, and the code that turns a prompt into tokens (GENERATION_CODE). A row is stored
without its input and reference: they are taken from the current test rows, so a reused row is the line a new
generation would write. A missing, unreadable or partial file is generated again and rewritten; a folder that
cannot be written only costs the generation next time.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline import identity
from pipeline.atomic import write_text_atomic
from pipeline.batches import append_flushed
from pipeline.decode import prediction_line
from pipeline.runtime import package_versions
from pipeline.stage import inputs_hash

log = logging.getLogger(__name__)

# The modules that decide which tokens a model generates for a prompt (an edit here makes new keys).
GENERATION_CODE = ("adapters.py", "attention.py", "batches.py", "decode.py", "families.py", "models.py",
                   "prompt.py", "tokenized.py")
# Fields of a prediction row that come from the test row, not from the model.
ROW_FIELDS = ("id", "model", "input", "reference")


class PredictionCache:
    def __init__(self, folder: Path, stage_inputs: dict, device, dtype):
        import torch

        packages = package_versions()
        engine = {
            "packages": {name: packages[name] for name in ("python", "torch", "transformers", "peft")},
            "device": device.type, "dtype": str(dtype).removeprefix("torch."),
            "hardware": torch.cuda.get_device_name(device) if device.type == "cuda"
            else torch.backends.cpu.get_cpu_capability(),
            "code": identity.code_identity([Path(__file__).with_name(name) for name in GENERATION_CODE]),
        }
        # Each model's inputs alone: the base model's without adapters, an adapter's with it alone, under one name
        # (the same adapter is "tuned" in one run and "candidate" in another).
        adapters = stage_inputs["adapters"]
        each_model = {name: {**stage_inputs, "adapters": {"model": adapters[name]} if name in adapters else {}}
                      for name in ["base", *adapters]}
        self.paths = {name: Path(folder) / f"{inputs_hash({**inputs, 'engine': engine})}.jsonl"
                      for name, inputs in each_model.items()}

    def fill(self, own: Path, rows: list[dict], done: set[tuple[str, str]]) -> dict[str, int]:
        """Appends to `own` the rows of every model whose file holds all of `rows` and that are not in `done`;
        {model: rows written}. They are added to `done`."""
        reused = {}
        for name, path in self.paths.items():
            todo = [row for row in rows if (row["id"], name) not in done]
            records = self._load(name, path, [row["id"] for row in todo]) if todo else None
            if records is None:
                continue
            with own.open("a", encoding="utf-8") as out:
                append_flushed(out, [prediction_line(row, name, records[row["id"]]) for row in todo])
            done.update((row["id"], name) for row in todo)
            reused[name] = len(todo)
        return reused

    def keep(self, rows: list[dict], skip: dict[str, int]) -> None:
        """Writes each model's merged rows to its file, but those of the models in `skip` (reused from there)."""
        for name, path in self.paths.items():
            if name in skip:
                continue
            mine = [{k: v for k, v in row.items() if k not in ROW_FIELDS[1:]} for row in rows if row["model"] == name]
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in mine))
                log.info("generate %s: %d rows kept in the prediction cache %s", name, len(mine), path)
            except Exception as exc:  # noqa: BLE001 - a cache that cannot be written only costs generating again
                log.warning("generate %s: cannot write the prediction cache %s: %s", name, path, exc)

    @staticmethod
    def _load(name: str, path: Path, ids: list[str]) -> dict[str, dict] | None:
        """{id: the model's generated record} for every one of `ids`, or None (no complete file for this key)."""
        try:
            records = {row["id"]: {k: v for k, v in row.items() if k not in ROW_FIELDS}
                       for row in map(json.loads, path.read_text(encoding="utf-8").splitlines())}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("generate %s: ignoring the unreadable cached predictions %s (%s)", name, path, exc)
            return None
        if not set(ids) <= set(records):
            log.warning("generate %s: ignoring %s, which lacks rows of this test split", name, path)
            return None
        log.info("generate %s: %d rows reused from the prediction cache %s", name, len(ids), path)
        return records
