"""Predictions kept between runs, one file per model, named by what that model's rows depend on. A base model's rows
are the same for every adapter gated against it: a CI job that keeps this folder (generate.prediction_cache)
between runs generates only the rows of the adapter under test.

    cache = PredictionCache(folder, cfg, test_inputs, model_id, device, dtype)
    records = cache.load(name, adapter_identity)        # {id: generated record} for every test row, or None
    cache.save(name, adapter_identity, rows)            # a model it generated, once the stage merged its rows

A model's key is what the generate stage's inputs hold for that model alone (its config keys, the test ids and
inputs, the base model, the prompt, the adapter: pipeline/identity.generate_inputs), plus what a stage directory
never leaves but a cache shared by machines does: the packages that compute the tokens, the device, its CPU
instruction set or GPU, the dtype, and the code that turns a prompt into tokens (pipeline/GENERATION_CODE). A
row is stored without its input and reference: they are taken from the current test rows, so a reused row is the
line a new generation would write. A missing, torn or partial file is regenerated; a folder that cannot be
written only costs the generation next time.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline import identity
from pipeline.atomic import write_text_atomic
from pipeline.config import Config
from pipeline.runtime import package_versions
from pipeline.stage import inputs_hash

log = logging.getLogger(__name__)

# The modules that decide which tokens a model generates for a prompt (an edit here makes new keys).
GENERATION_CODE = ("adapters.py", "attention.py", "batches.py", "decode.py", "families.py", "models.py",
                   "prompt.py", "tokenized.py")
# Fields of a prediction row that come from the test row, not from the model.
ROW_FIELDS = ("id", "model", "input", "reference")


class PredictionCache:
    def __init__(self, folder: Path, cfg: Config, test_inputs: dict, model_id: dict, device, dtype):
        import torch

        self.folder, self.cfg, self.test_inputs, self.model_id = Path(folder), cfg, test_inputs, model_id
        packages = package_versions()
        self.engine = {
            "packages": {name: packages[name] for name in ("python", "torch", "transformers", "peft")},
            "device": device.type, "dtype": str(dtype).removeprefix("torch."),
            "hardware": torch.cuda.get_device_name(device) if device.type == "cuda"
            else torch.backends.cpu.get_cpu_capability(),
            "code": identity.code_identity([Path(__file__).with_name(name) for name in GENERATION_CODE]),
        }

    def path(self, adapter_identity: dict | None) -> Path:
        adapters = {"model": adapter_identity} if adapter_identity else {}
        inputs = identity.generate_inputs(self.cfg, self.test_inputs, self.model_id, adapters)
        return self.folder / f"{inputs_hash({**inputs, 'engine': self.engine})}.jsonl"

    def load(self, name: str, adapter_identity: dict | None, ids: list[str]) -> dict[str, dict] | None:
        """{id: the model's generated record} for every one of `ids`, or None (no complete file for this key)."""
        path = self.path(adapter_identity)
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

    def save(self, name: str, adapter_identity: dict | None, rows: list[dict]) -> None:
        path = self.path(adapter_identity)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, "".join(json.dumps({k: v for k, v in row.items() if k not in ROW_FIELDS[1:]},
                                                       ensure_ascii=False) + "\n" for row in rows))
            log.info("generate %s: %d rows kept in the prediction cache %s", name, len(rows), path)
        except Exception as exc:  # noqa: BLE001 - a cache that cannot be written only costs generating again
            log.warning("generate %s: cannot write the prediction cache %s: %s", name, path, exc)
