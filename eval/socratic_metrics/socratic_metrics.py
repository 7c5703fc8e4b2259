"""socratic-lora's metrics as a Hugging Face `evaluate` module: the numbers report.json has, Korean-correct
(mecab-ko morphemes for ROUGE and BLEU, NFC-normalized text), for use outside the job (a notebook, another
trainer's compute_metrics). A local folder: `evaluate.load` reads it from disk and fetches nothing.

    import evaluate
    socratic = evaluate.load("eval/socratic_metrics")          # from the repository root (or its absolute path)
    socratic.compute(predictions=["(가정 살펴보기) ..."], references=["(가정 살펴보기) ..."], tokenize="ko-mecab")
    # {"rougeL": ..., "bleu": ..., "type_accuracy": ..., ...}: every metric of eval/metrics.py's REGISTRY that
    # needs only the texts

evaluate's own "rouge" and "sacrebleu" are fetched from the Hub (they fail offline), and its rouge tokenizer keeps
only [a-z0-9]: Korean scores 0. This module calls eval.metrics.ExampleScores, which the score stage uses too.
"""

import datasets
import evaluate

from eval.metrics import TOKENIZERS, ExampleScores

INPUTS = f"""predictions: list of str, the model's outputs; references: list of str, one per prediction;
tokenize: how ROUGE and BLEU split text, one of {', '.join(TOKENIZERS)} (default ko-mecab)."""


class SocraticMetrics(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description=INPUTS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
            reference_urls=["https://github.com/google-research/google-research/tree/master/rouge",
                            "https://github.com/mjpost/sacrebleu"])

    def _compute(self, predictions: list[str], references: list[str], tokenize: str = "ko-mecab") -> dict:
        return ExampleScores(predictions, references, tokenize).metrics()
