"""builtin:gpt trains on a text file from a mounted volume (trainer.args.corpus_file)."""

from __future__ import annotations

import pytest

from kubetrain.api.manifests import parse_trainingjob
from kubetrain.trainer_env import contract_for
from kubetrain_trainer.api import WorkloadContext
from kubetrain_trainer.builtin_gpt import make_workload
from kubetrain_trainer.failure import ConfigError


def _ctx(args: dict[str, str]) -> WorkloadContext:
    job = parse_trainingjob({"apiVersion": "kubetrain.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "corpus"},
                             "spec": {"trainer": {"sequenceLength": 16, "args": args}}})
    return WorkloadContext(contract_for(job, "/tmp/unused"))


def test_the_model_reads_its_samples_from_the_file(tmp_path):
    text = "the quick brown fox jumps over the lazy dog. " * 40
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    workload = make_workload(_ctx({"corpus_file": str(corpus)}))
    # Every window the trainer draws is a slice of the file's bytes.
    assert len(workload.dataset) == (len(text.encode()) - 1) // 16
    sample = bytes(workload.dataset[3].tolist())
    assert sample in text.encode()
    generated = make_workload(_ctx({}))
    assert bytes(generated.dataset[3].tolist()) not in text.encode()


@pytest.mark.parametrize("content", [None, b"", b"too short"], ids=["missing", "empty", "shorter-than-a-sample"])
def test_a_corpus_file_that_cannot_train_is_a_config_error(tmp_path, content):
    corpus = tmp_path / "corpus.txt"
    if content is not None:
        corpus.write_bytes(content)
    with pytest.raises(ConfigError, match="corpus_file"):
        make_workload(_ctx({"corpus_file": str(corpus)}))
