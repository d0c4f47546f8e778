import warnings
from pathlib import Path

import pytest

from studio.config import RunConfig
from studio.fields import field_help
from studio.recipes import (RetiredKeyWarning, apply_overrides, from_dict, load_recipe, load_saved_config, save_config,
                            to_dict)
from studio.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_defaults_are_typed_and_documented():
    cfg = RunConfig()
    assert cfg.lora.r == 16 and cfg.train.max_steps == 60
    assert "rank" in field_help("lora", "r")


def test_recipe_overrides_only_what_it_names(tmp_path):
    cfg = load_recipe(write(tmp_path, "lora:\n  r: 32\ntrain:\n  learning_rate: 1e-4\n"))
    assert cfg.lora.r == 32
    assert cfg.train.learning_rate == pytest.approx(1e-4)  # YAML reads 1e-4 as text: accepted as a number
    assert cfg.lora.alpha == RunConfig().lora.alpha


def test_unknown_key_names_it_and_the_closest_valid_key(tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown key 'lora\.rank'.*Did you mean 'r'"):
        load_recipe(write(tmp_path, "lora:\n  rank: 8\n"))
    with pytest.raises(ConfigError, match=r"Unknown key 'trian'.*Did you mean 'train'"):
        load_recipe(write(tmp_path, "trian:\n  max_steps: 8\n"))


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.max_steps must be a whole number"):
        load_recipe(write(tmp_path, "train:\n  max_steps: lots\n"))
    with pytest.raises(ConfigError, match=r"lora\.enabled must be true or false"):
        load_recipe(write(tmp_path, "lora:\n  enabled: 3\n"))
    with pytest.raises(ConfigError, match=r"model\.load_in must be one of '16bit', '8bit', '4bit'"):
        load_recipe(write(tmp_path, "model:\n  load_in: 2bit\n"))


def test_dotted_overrides_parse_values_and_reject_unknown_keys():
    cfg = apply_overrides(RunConfig(), ["lora.r=32", "train.max_steps=60", "lora.target_modules=[q_proj,v_proj]",
                                        "data.path=my data.jsonl", "lora.use_dora=true"])
    assert (cfg.lora.r, cfg.train.max_steps, cfg.lora.target_modules) == (32, 60, ("q_proj", "v_proj"))
    assert cfg.data.path == "my data.jsonl" and cfg.lora.use_dora is True
    with pytest.raises(ConfigError, match=r"Unknown key 'lora\.rr'.*Did you mean 'r'"):
        apply_overrides(RunConfig(), ["lora.rr=3"])
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        apply_overrides(RunConfig(), ["lora.r"])


def test_saved_config_loads_back_identically(tmp_path):
    cfg = apply_overrides(RunConfig(), ["lora.r=4", "export.gguf=[f16,q8_0]"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_recipe(tmp_path / "config.yaml") == cfg
    assert to_dict(cfg)["export"]["gguf"] == ["f16", "q8_0"]


def test_missing_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="Recipe not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(write(tmp_path, "lora: [unclosed\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        from_dict({"lora": 3})


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_loads_and_has_a_header(recipe):
    load_recipe(recipe)
    header = recipe.read_text().splitlines()[:12]
    assert any(line.startswith("# Run:") for line in header), "recipes say how to run them"
    assert any(line.startswith("# Hardware:") for line in header), "recipes say what hardware they need"


def test_data_source_keys_load_from_a_recipe(tmp_path):
    cfg = load_recipe(write(tmp_path, 'data:\n  path: train/*.jsonl, extra.csv\n  eval_path: dev.jsonl\n  split: test\n'
                                      '  subset: v2\n  text_unit: block\n  max_bad_fraction: 0\n  format: preference\n'
                                      '  template: "Summarize:\\n{dialogue}\\nSummary: {summary}"\n'))
    d = cfg.data
    assert (d.path, d.eval_path, d.split, d.subset, d.text_unit) == ("train/*.jsonl, extra.csv", "dev.jsonl", "test",
                                                                     "v2", "block")
    assert d.max_bad_fraction == 0.0 and d.format == "preference" and d.template == "Summarize:\n{dialogue}\nSummary: {summary}"
    with pytest.raises(ConfigError, match=r"data\.text_unit must be one of 'auto', 'line', 'block'"):
        load_recipe(write(tmp_path, "data:\n  text_unit: paragraph\n"))
    with pytest.raises(ConfigError, match=r"Unknown key 'data\.evalpath'.*Did you mean 'eval_path'"):
        load_recipe(write(tmp_path, "data:\n  evalpath: dev.jsonl\n"))


def test_a_dotted_key_under_a_mapping_field_sets_one_entry():
    cfg = apply_overrides(RunConfig(), ['data.columns.instruction="Question Text"', "data.columns.output=Answer"])
    assert cfg.data.columns == {"instruction": "Question Text", "output": "Answer"}
    cfg = apply_overrides(cfg, ["data.columns.output="])  # an empty value removes the entry
    assert cfg.data.columns == {"instruction": "Question Text"}
    whole = apply_overrides(RunConfig(), ["data.columns={prompt: Q, completion: A}"])
    assert whole.data.columns == {"prompt": "Q", "completion": "A"}
    with pytest.raises(ConfigError, match=r"Unknown key 'data\.colums'\. Did you mean 'columns'"):
        apply_overrides(RunConfig(), ["data.colums.instruction=Q"])
    with pytest.raises(ConfigError, match=r"Unknown key 'data\.columns\.instruction\.x': data\.columns holds plain"):
        apply_overrides(RunConfig(), ["data.columns.instruction.x=Q"])
    with pytest.raises(ConfigError, match=r"Unknown key 'data'\..*Valid keys here: .*name"):
        apply_overrides(RunConfig(), ["data=x"])


def test_where_runs_go_is_no_setting_but_old_recipes_and_runs_still_load(tmp_path):
    old = "name: old\ntrain:\n  max_steps: 7\n  runs_dir: /somewhere/runs\n"
    with pytest.warns(RetiredKeyWarning, match=r"train\.runs_dir is ignored.*--runs-dir"):
        cfg = load_recipe(write(tmp_path, old))
    assert cfg.train.max_steps == 7 and "runs_dir" not in to_dict(cfg)["train"]
    saved = tmp_path / "config.yaml"  # a run folder made by an older version
    saved.write_text(old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_saved_config(saved) == cfg
    with pytest.raises(ConfigError, match=r"train\.runs_dir is no longer a setting.*--runs-dir"):
        apply_overrides(RunConfig(), ["train.runs_dir=/x"])


def test_auto_optimizer_is_one_rule_for_training_the_disk_check_and_the_fit():
    from studio.config_rules import optimizer_for

    assert (optimizer_for("auto", cuda=True), optimizer_for("auto", cuda=False)) == ("adamw_8bit", "adamw_torch")
    assert optimizer_for("sgd", cuda=True) == "sgd"
