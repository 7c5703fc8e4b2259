import json

import pytest

from pipeline import adapters, identity, sources
from pipeline.config import ModelConfig
from pipeline.errors import ConfigError

TOKEN = "hf_FAKEtokenDoNotShow0123456789"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """$HOME in tmp_path, the Hub token in the environment, and the working directory elsewhere."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_TOKEN_FILE", raising=False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def test_each_kind_of_source_is_read_into_its_location_revision_and_token(home, tmp_path):
    model = home / "models" / "tiny"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"stand-in weights")
    converted = tmp_path / "cache" / "embedded" / "gemma-3-270m"
    converted.mkdir(parents=True)
    (converted / "model.safetensors").write_bytes(b"stand-in weights")  # already converted: nothing to do

    found = {
        "embedded": sources.model_source(ModelConfig(cache_dir=str(tmp_path / "cache"), revision="v1")),
        "local": sources.model_source(ModelConfig(source="~/models/tiny", revision="v1")),
        "hub": sources.model_source(ModelConfig(source="google/gemma-3-1b-it", revision="v1")),
        "local adapter": sources.adapter_source("~/adapters/a", "generate.adapters.a", ModelConfig(), "v2"),
        "hub adapter": sources.adapter_source("someone/lora", "model.adapter", ModelConfig(), "v2"),
    }
    # A folder's revision and token would mean nothing: only a Hub source has them.
    assert {name: (s.kind, s.location, s.key, s.revision, s.token) for name, s in found.items()} == {
        "embedded": ("embedded", str(converted), "model.source", None, None),
        "local": ("local", str(model), "model.source", None, None),
        "hub": ("hub", "google/gemma-3-1b-it", "model.source", "v1", TOKEN),
        "local adapter": ("local", str(home / "adapters" / "a"), "generate.adapters.a", None, None),
        "hub adapter": ("hub", "someone/lora", "model.adapter", "v2", TOKEN),
    }
    (tmp_path / "org" / "model").mkdir(parents=True)  # a folder named like a Hub id, next to the job: the user's
    assert [sources.source_kind(s) for s in ("org/model", "org/other", "./org/other", "embedded:x")] == [
        "local", "hub", "local", "embedded"]


def test_the_token_is_never_shown_nor_part_of_an_identity(home, tmp_path):
    hub = sources.model_source(ModelConfig(source="google/gemma-3-1b-it"))
    at_commit = identity.pinned(hub, {"hub": hub.location, "commit": "c" * 40})
    assert (at_commit.revision, at_commit.token) == ("c" * 40, TOKEN)  # loading at the commit still needs it
    for source in (hub, at_commit, sources.adapter_source("someone/lora", "model.adapter", ModelConfig())):
        for shown in (repr(source), str(source), f"{source}", repr([source])):
            assert TOKEN not in shown and TOKEN[3:15] not in shown
    adapter = home / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"stand-in")
    local = sources.adapter_source(str(adapter), "model.adapter", ModelConfig())
    assert TOKEN not in json.dumps(adapters.adapter_identity(local, tmp_path / "c"))


def test_an_unknown_embedded_model_or_an_embedded_adapter_is_a_config_error(tmp_path):
    cfg = ModelConfig(source="embedded:gemma-3-1b", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="model.source: unknown embedded model 'embedded:gemma-3-1b'; the only one "
                                          "is embedded:gemma-3-270m"):
        sources.model_source(cfg)
    assert not (tmp_path / "cache").exists()  # nothing was converted
    with pytest.raises(ConfigError, match=r"generate.adapters.x: 'embedded:gemma-3-270m' is not an adapter"):
        sources.adapter_source("embedded:gemma-3-270m", "generate.adapters.x", cfg)


def test_a_missing_local_model_folder_is_a_config_error_naming_it(home):
    with pytest.raises(ConfigError, match=f"model.source: model path {home / 'nowhere'} does not exist"):
        sources.model_source(ModelConfig(source="~/nowhere"))


def test_token_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN_FILE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "from-env")
    assert sources.hf_token(ModelConfig()) == "from-env"
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert sources.hf_token(ModelConfig(token_file=str(token_file))) == "from-file"
    monkeypatch.setenv("HF_TOKEN_FILE", str(token_file))
    assert sources.hf_token(ModelConfig()) == "from-file"
    with pytest.raises(ConfigError, match="cannot read the Hub token file"):
        sources.hf_token(ModelConfig(token_file=str(tmp_path / "missing")))


def test_cache_dir_follows_hf_home_and_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert sources.cache_root(ModelConfig()) == tmp_path / "xdg" / "socratic-lora"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert sources.cache_root(ModelConfig()) == tmp_path / "hf" / "socratic-lora"
    assert sources.cache_root(ModelConfig(cache_dir=str(tmp_path / "mine"))) == tmp_path / "mine"


def test_interrupted_conversion_leaves_no_half_model(tmp_path, monkeypatch):
    def interrupted(folder):
        (folder / "partial.gguf").parent.mkdir(parents=True, exist_ok=True)
        (folder / "partial.gguf").write_bytes(b"GGUF" + b"\0" * 1000)
        raise KeyboardInterrupt

    monkeypatch.setattr(sources, "assemble_embedded_gguf", interrupted)
    cfg = ModelConfig(cache_dir=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        sources.ensure_embedded_model(cfg)
    assert list((tmp_path / "embedded").iterdir()) == []
