import pytest

from studio.config import ModelConfig
from studio.errors import ModelLoadError
from studio.models import load_model, resolve_source


def test_missing_model_paths_are_named(tmp_path):
    with pytest.raises(ModelLoadError, match="Model not found: ./nowhere"):
        resolve_source("./nowhere")
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        resolve_source(str(tmp_path / "model.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="has no config.json"):
        resolve_source(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="No model chosen"):
        resolve_source("")


def test_hub_id_offline_gives_a_clear_error():
    with pytest.raises(ModelLoadError, match="hub is not reachable"):
        load_model(ModelConfig(name_or_path="nobody/no-such-model"))


@pytest.mark.parametrize("load_in", ["16bit", "8bit", "4bit"])
def test_loads_in_each_precision(tiny_llama, load_in):
    model, tokenizer = load_model(ModelConfig(name_or_path=str(tiny_llama), load_in=load_in))
    linear = model.model.layers[0].self_attn.q_proj
    expected = {"16bit": "Linear", "8bit": "Linear8bitLt", "4bit": "Linear4bit"}[load_in]
    assert type(linear).__name__ == expected
    assert tokenizer.pad_token is not None


def test_gguf_model_is_dequantized_once_and_cached(trained_run, tmp_path):
    """A .gguf file loads through transformers; the second load reuses the cached folder. Its tokenizer alone
    (what a data preview needs) is read without dequantizing the weights."""
    from studio.export.exporting import export_run
    from studio.models import _gguf_cache, dequantized_folder, load_tokenizer

    result = export_run(trained_run, gguf_types=("f16",))
    gguf = next(p for p in result.files if p.suffix == ".gguf")
    alone = load_tokenizer(str(gguf))
    assert (_gguf_cache("gguf-tokenizers", gguf) / "tokenizer_config.json").is_file()
    assert not _gguf_cache("dequantized", gguf).exists()
    model, tokenizer = load_model(ModelConfig(name_or_path=str(gguf)))
    folder = dequantized_folder(gguf)
    assert (folder / "config.json").is_file()
    mtime = folder.stat().st_mtime
    load_model(ModelConfig(name_or_path=str(gguf)))
    assert dequantized_folder(gguf).stat().st_mtime == mtime
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained(trained_run / "adapter")
    text = "What is the capital of Peru? Ünïcödé 🚀"
    assert tokenizer(text)["input_ids"] == original(text)["input_ids"] == alone(text)["input_ids"]
    assert model.config.vocab_size == original.vocab_size
