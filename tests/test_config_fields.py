"""The config is the one source of every setting: the CLI lists it, the UI renders it, recipes save it."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_config_field_has_a_control_in_the_studio(tmp_path):
    from studio.fields import config_fields
    from studio.services import Studio
    from studio.ui.app import build_app

    keys = set(build_app(Studio(runs_dir=tmp_path)).form_keys)
    missing = [f.key for f in config_fields() if f.key not in keys and f.kind != "mapping"]
    assert missing == [], f"config fields without a control (place them, or they show under 'Advanced'): {missing}"
    assert {k for k in keys if k.startswith("data.columns.")}, "mapping entries have their own dropdowns"


def test_keys_lists_every_key_with_type_default_and_help():
    done = subprocess.run([sys.executable, str(ROOT / "launch.py"), "keys", "train"], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "train.learning_rate  (float > 0; default 0.0002)\n    Peak learning rate." in done.stdout
    assert "train.scheduler  (linear | cosine | constant | constant_with_warmup; default 'linear')" in done.stdout
    assert "lora.r" not in done.stdout, "one section only"


def test_a_field_added_in_one_line_shows_up_in_keys_the_ui_and_a_saved_recipe(tmp_path):
    """Copy the studio, add one line to TrainConfig, and look for the new key everywhere."""
    copy = tmp_path / "studio-copy"
    for name in ("studio", "recipes", "assets"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "launch.py", copy / "launch.py")
    config = copy / "studio" / "config.py"
    anchor = "    batch_size: int = _f(2,"
    text = config.read_text()
    assert anchor in text
    config.write_text(text.replace(anchor, '    flux_capacitor: int = _f(7, "A throwaway setting.", min=0)\n' + anchor, 1))

    keys = subprocess.run([sys.executable, "launch.py", "keys", "train"], cwd=copy, capture_output=True, text=True)
    assert "train.flux_capacitor  (int >= 0; default 7)\n    A throwaway setting." in keys.stdout, keys.stderr
    check = (
        "import tempfile, pathlib\n"
        "from studio.config import RunConfig\n"
        "from studio.recipes import apply_overrides, recipe_text\n"
        "from studio.services import Studio\n"
        "from studio.ui.app import build_app\n"
        "app = build_app(Studio(runs_dir=pathlib.Path(tempfile.mkdtemp())))\n"
        "assert 'train.flux_capacitor' in app.form_keys, 'no control in the UI'\n"
        "assert 'flux_capacitor: 9' in recipe_text(apply_overrides(RunConfig(), ['train.flux_capacitor=9']))\n"
        "try:\n"
        "    apply_overrides(RunConfig(), ['train.flux_capacitor=-1'])\n"
        "    raise SystemExit('the bound was not checked')\n"
        "except Exception as exc:\n"
        "    assert 'at least 0' in str(exc), exc\n"
    )
    done = subprocess.run([sys.executable, "-c", check], cwd=copy, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_each_gguf_type_has_its_facts():
    from studio.config import GGUF_TYPES
    from studio.fields import field_info
    from studio.export.exporting import BYTES_PER_PARAM
    from studio.export.gguf import CONVERTER_TYPES, EXPECTED_TENSOR_TYPES, QUANTIZER_FTYPES

    assert field_info("export.gguf").choices == ("auto", *GGUF_TYPES)
    assert set(CONVERTER_TYPES) | set(QUANTIZER_FTYPES) == set(GGUF_TYPES) == set(EXPECTED_TENSOR_TYPES)
    assert set(GGUF_TYPES) <= set(BYTES_PER_PARAM)
