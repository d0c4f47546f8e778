"""Faults injected for real: NaN training, kill -9, two resumes at once, damaged checkpoints,
a broken status.json and a full file system. Each checks what the studio then *says* and
that nothing is lost."""

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import SAMPLE_DATA, tiny_config, train_tiny

from studio.train.checkpoints import latest_checkpoint
from studio.errors import DiskSpaceError, RunBusyError, TrainingError
from studio.events import read_events
from studio.runs import read_status, run_state

ROOT = Path(__file__).resolve().parent.parent


def launch(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-u", str(ROOT / "launch.py"), *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def recipe(tmp_path, model, steps=40, extra="") -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"name: fault\nmodel:\n  name_or_path: {model}\ndata:\n  path: {SAMPLE_DATA}\n  max_samples: 32\n"
        f"lora:\n  r: 4\ntrain:\n  max_steps: {steps}\n  batch_size: 2\n  grad_accum: 1\n  learning_rate: 3.0e-3\n"
        f"  max_length: 128\n  save_steps: 2\n  gradient_checkpointing: false\n{extra}")
    return path


def read_until(process, text: str) -> str:
    seen = []
    for line in process.stdout:
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"{text!r} never appeared:\n{''.join(seen)}")


def runs_listing(tmp_path) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "launch.py"), "runs", "--runs-dir", tmp_path / "runs"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


# ---------------------------------------------------------------- divergence


def test_nan_training_stops_as_diverged_and_keeps_the_last_good_checkpoint(tiny_llama, tmp_path):
    result = train_tiny(tiny_config(tiny_llama, "train.learning_rate=1e4", "train.max_grad_norm=0",
                                    "train.max_steps=12", "train.save_steps=2"), tmp_path)
    run = result.run_dir
    assert result.state == "diverged" and result.step < 12
    status = read_status(run)
    assert status["state"] == "diverged" and status["loss"] is None, "NaN is never stored as a number"
    assert "learning rate 10000" in status["health"] and "train.learning_rate=0.0005" in status["health"]
    events = read_events(run / "events.jsonl")
    bad = [e for e in events if e.kind == "log" and not (e.loss == e.loss and e.grad_norm == e.grad_norm)]
    assert bad and bad[-1].step == result.step, "the non-finite step is logged as it is, not as 0"
    assert events[-1].kind == "end" and events[-1].extra["state"] == "diverged"
    good = latest_checkpoint(run)
    assert good is not None and int(good.name.split("-")[1]) < result.step, "no checkpoint of the bad weights"
    assert f"The newest checkpoint from before the values went bad ({good.name}) is kept" in status["health"]
    from safetensors.torch import load_file

    kept = load_file(run / "adapter" / "adapter_model.safetensors")
    assert all(t.isfinite().all() for t in kept.values()), "the run's weights are the last good ones"
    assert run_state(run).state == "diverged"
    assert_plots_show_a_gap_and_a_red_mark(result, events)
    with pytest.raises(TrainingError, match="diverged at step .* train.learning_rate=0.0005"):
        from studio.events import MemorySink
        from studio.train.training import run_training

        run_training(run, MemorySink(), resume=True)


def assert_plots_show_a_gap_and_a_red_mark(result, events):
    from studio.jobs import JobSnapshot
    from studio.ui.live import NON_FINITE, training_view

    status, _, loss, lr_grad, *_ = training_view(JobSnapshot("train", result.run_dir.name, "completed", events,
                                                             result=result))
    assert status.startswith("🛑 Diverged") and "**Health** · Training diverged at step" in status
    assert "(not a number)" in status
    for frame, name in ((loss, "loss"), (lr_grad, "grad norm")):
        at_bad_step = frame[(frame.step == result.step) & (frame.series == name)]
        assert at_bad_step.value.isna().all(), f"the {name} curve has a gap, never a 0, at the bad step"
        marks = frame[frame.series == NON_FINITE]
        assert (marks.step == result.step).sum() == 2, "a red vertical mark stands at the bad step"
        assert marks.value.dropna().min() < marks.value.dropna().max()


def test_early_stopping_keeps_the_best_weights(tiny_llama, tmp_path):
    result = train_tiny(tiny_config(tiny_llama, "data.eval_fraction=0.25", "train.eval_steps=2",
                                    "train.early_stopping=1", "train.learning_rate=3e-2", "train.max_steps=40"), tmp_path)
    evals = [e for e in read_events(result.run_dir / "events.jsonl") if e.kind == "eval"]
    best = min(evals, key=lambda e: e.eval_loss)
    assert result.state == "completed" and result.step < 40, "stopped once the eval loss stopped improving"
    assert evals[-1].eval_loss >= best.eval_loss and f"Stopped early at step {result.step}" in result.health
    state = json.loads((latest_checkpoint(result.run_dir) / "trainer_state.json").read_text())
    assert state["best_global_step"] == best.step


# ---------------------------------------------------------------- dead and busy runs


def test_a_killed_run_reads_interrupted_and_resumes(tiny_llama, tmp_path):
    process = launch("train", recipe(tmp_path, tiny_llama), "--runs-dir", tmp_path / "runs")
    read_until(process, "step 5/40")
    process.send_signal(signal.SIGKILL)
    process.wait()
    run = next((tmp_path / "runs").iterdir())
    assert read_status(run)["state"] == "running", "the dead process could not say otherwise"
    assert run_state(run).state == "interrupted"
    listing = runs_listing(tmp_path)
    assert "interrupted" in listing and f"python launch.py resume {run}" in listing
    good = latest_checkpoint(run)  # the listing says where resume goes on from, and counts steps from there
    assert (f"step {good.name.split('-')[1]} " in listing and f"continue from {good.name}" in listing if good
            else "step - " in listing and "from the start: no checkpoint was saved" in listing), listing

    resumed = launch("resume", run)
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    assert "completed at step 40" in out and run_state(run).state == "completed"
    steps = [e.step for e in read_events(run / "events.jsonl") if e.kind == "log"]
    assert steps[-1] == 40 and 1 < steps.index(steps[-1]) and max(steps) == 40


def test_a_second_resume_of_a_run_in_training_is_refused_naming_the_holder(tiny_llama, tmp_path):
    process = launch("train", recipe(tmp_path, tiny_llama, steps=400), "--runs-dir", tmp_path / "runs")
    try:
        read_until(process, "step 2/400")
        run = next((tmp_path / "runs").iterdir())
        second = subprocess.run([sys.executable, str(ROOT / "launch.py"), "resume", run], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"{run.name} is in use: training by process {process.pid}" in second.stderr
        assert run_state(run).state == "running"
        from studio.events import MemorySink
        from studio.export.exporting import export_run

        with pytest.raises(RunBusyError, match="in use: training"):
            export_run(run, ("q8_0",), (), MemorySink())
    finally:
        process.kill()
        process.wait()


def test_resume_of_a_completed_run_asks_for_more_steps(trained_run, tmp_path):
    import shutil

    from studio.events import MemorySink
    from studio.train.training import run_training

    run = Path(shutil.copytree(trained_run, tmp_path / trained_run.name))
    with pytest.raises(TrainingError, match=r"already completed all 10 steps.*train\.max_steps=20"):
        run_training(run, MemorySink(), resume=True)
    with pytest.raises(TrainingError, match="Only train.max_steps, train.epochs, train.devices and train.parallel can change"):
        run_training(run, MemorySink(), resume=True, changes=["lora.r=4"])
    result = run_training(run, MemorySink(), resume=True, changes=["train.max_steps=12"])
    assert (result.state, result.step) == ("completed", 12)
    assert "max_steps: 12" in (run / "config.yaml").read_text()


def test_a_damaged_newest_checkpoint_is_named_and_resume_uses_the_previous_one(tiny_llama, tmp_path):
    from studio.events import MemorySink
    from studio.train.training import run_training

    stop = threading.Event()
    result = train_tiny(tiny_config(tiny_llama, "train.save_steps=2", "train.save_total_limit=3"), tmp_path,
                        stop=stop, sink=lambda e: e.kind == "log" and e.step == 6 and stop.set())
    run = result.run_dir
    assert latest_checkpoint(run).name == "checkpoint-6"
    optimizer = run / "checkpoints" / "checkpoint-6" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:1000])  # cut short, as a crash mid-write leaves it
    sink = MemorySink()
    resumed = run_training(run, sink, resume=True)
    warnings = [e.message for e in sink.events() if e.kind == "warning"]
    assert warnings and "checkpoint-6 is damaged: optimizer.pt is damaged (cut short: 1,000 bytes)" in warnings[0]
    assert "resuming from checkpoint-4" in warnings[0]
    assert (run / "damaged" / "checkpoint-6" / "trainer_state.json").is_file(), "set aside, not deleted"
    assert resumed.state == "completed" and resumed.step == 10
    assert [e.step for e in sink.events() if e.kind == "log"][0] == 5


def test_a_checkpoint_whose_weights_file_holds_no_tensors_is_damaged(trained_run, tmp_path):
    import shutil

    from safetensors.torch import save_file

    from studio.train.checkpoints import checkpoint_problem

    checkpoint = Path(shutil.copytree(latest_checkpoint(trained_run), tmp_path / "checkpoint-10"))
    assert checkpoint_problem(checkpoint) is None
    save_file({}, checkpoint / "adapter_model.safetensors")
    assert checkpoint_problem(checkpoint) == "adapter_model.safetensors is damaged (it holds no tensors)"


def test_a_broken_status_marks_that_run_unreadable_and_lists_the_rest(trained_run, tmp_path):
    import shutil

    runs = tmp_path / "runs"
    good = Path(shutil.copytree(trained_run, runs / "20260101-000000_good"))
    broken = Path(shutil.copytree(trained_run, runs / "20260101-000001_broken"))
    (broken / "status.json").write_text('{"state": "compl')
    listing = runs_listing(tmp_path)
    assert f"{good}  completed" in listing
    assert f"{broken}  unreadable" in listing and "status.json is damaged" in listing


# ---------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB file system of its own (tmpfs), where the machine allows mounting one."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


def fill(folder: Path, leave: int = 0) -> Path:
    import shutil

    filler = folder / "filler"
    with open(filler, "wb") as fh:
        try:
            fh.write(b"\0" * max(shutil.disk_usage(folder).free - leave, 0))
        except OSError:
            pass
    return filler


def test_a_full_disk_at_start_leaves_no_half_made_run(tiny_llama, small_disk):
    from studio.runs import create_run_dir

    fill(small_disk)
    with pytest.raises(DiskSpaceError, match="the disk is full"):
        create_run_dir(tiny_config(tiny_llama), small_disk / "runs")
    assert not list((small_disk / "runs").glob("*/config.yaml")) and not list((small_disk / "runs").glob("*"))


def test_the_disk_check_before_training_refuses_in_the_right_unit(tiny_llama, small_disk):
    fill(small_disk, leave=200 * 1024)
    with pytest.raises(DiskSpaceError) as caught:
        train_tiny(tiny_config(tiny_llama), small_disk / "runs")
    text = str(caught.value)
    assert "Not enough disk space" in text and "KiB is free" in text and "0.0 GiB" not in text


def test_a_disk_that_fills_during_training_gives_one_message_and_the_true_state(tiny_llama, small_disk, tmp_path):
    from studio.events import MemorySink
    from studio.train.training import run_training

    runs = small_disk / "runs"
    filled = []

    def fill_at_step_3(event):
        if event.kind == "log" and event.step == 3 and not filled:
            filled.append(fill(small_disk))

    with pytest.raises(DiskSpaceError) as caught:
        train_tiny(tiny_config(tiny_llama, "train.save_steps=2"), runs, sink=fill_at_step_3)
    run = next(runs.iterdir())
    text = str(caught.value)
    assert "the disk is full" in text and "checkpoint-2" in text and "resume" in text
    assert "Traceback" not in text
    assert [p.name for p in (run / "checkpoints").glob("checkpoint-*")] == ["checkpoint-2"], "no half checkpoint"
    assert run_state(run).state in ("failed", "interrupted")
    with pytest.raises(DiskSpaceError, match="cannot start: the disk is full"):
        run_training(run, MemorySink(), resume=True)  # still full: the message, not a traceback
    filled[0].unlink()
    resumed = run_training(run, MemorySink(), resume=True)
    assert resumed.state == "completed" and resumed.step == 10
    first = next(e.loss for e in read_events(run / "events.jsonl") if e.kind == "log")
    assert f"fell from {first:.4g} to" in resumed.health, "the summary speaks of the whole run, not the resumed part"


def test_a_write_that_fails_on_a_full_disk_is_named_so_whatever_torch_says(small_disk):
    from studio.runs import is_disk_full

    torch_says = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 8310208 vs 8310096")
    assert not is_disk_full(torch_says, small_disk), "room left: another fault"
    filler = fill(small_disk)
    assert is_disk_full(torch_says, small_disk) and not is_disk_full(torch_says)
    filler.unlink()


def test_a_second_ctrl_c_aborts_with_a_message_not_a_traceback(tiny_llama, tmp_path):
    import time

    process = launch("train", recipe(tmp_path, tiny_llama, steps=400), "--runs-dir", tmp_path / "runs")
    read_until(process, "[stage] Loading")  # the model and data take a few seconds to prepare
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)  # signals sent back to back can arrive as one
    process.send_signal(signal.SIGINT)
    out = process.communicate(timeout=120)[0]
    assert process.returncode == 130, out
    assert "Traceback" not in out and "Aborted at step" in out and "python launch.py resume" in out
    run = next((tmp_path / "runs").iterdir())
    assert run_state(run).state == "interrupted"


def test_an_export_killed_at_any_stage_leaves_no_finished_looking_file(trained_run, tmp_path):
    import shutil

    run = Path(shutil.copytree(trained_run, tmp_path / trained_run.name, ignore=shutil.ignore_patterns("exports")))
    exports = run / "exports"
    for kill_at in ("Converting to GGUF", "Verifying q8_0"):
        process = launch("export", run, "--gguf", "q8_0")
        read_until(process, kill_at)
        process.send_signal(signal.SIGKILL)
        process.wait()
        finished = [p.name for p in exports.iterdir() if not p.name.startswith(".")]
        assert finished == [], f"killed at {kill_at!r}: nothing looks finished, only the work folder is left"
    again = launch("export", run, "--gguf", "q8_0")
    out = again.communicate(timeout=300)[0]
    assert again.returncode == 0, out
    assert (exports / "tiny-q8_0.gguf").is_file() and not (exports / ".work").exists()


def test_stop_ends_an_export_at_the_next_stage_keeping_only_finished_files(trained_run, tmp_path):
    import shutil

    from studio.export.exporting import export_run

    run = Path(shutil.copytree(trained_run, tmp_path / trained_run.name, ignore=shutil.ignore_patterns("exports")))
    stop = threading.Event()
    seen = []

    def press_stop_while_converting(event):
        seen.append(event.message)
        if event.message.startswith("Converting to GGUF f16"):
            stop.set()

    result = export_run(run, ("q8_0", "q4_k_m"), (), press_stop_while_converting, stop=stop)
    assert result.state == "stopped"
    names = sorted(p.name for p in (run / "exports").iterdir())
    assert names == sorted(["tiny-q8_0.gguf", "tiny-q8_0.report.json", "tiny-q8_0.Modelfile"]), names
    assert not any(m.startswith("Quantizing") for m in seen), "nothing after the stage where Stop was pressed"
    assert seen[-1].startswith("Export stopped")


def test_the_export_of_a_diverged_run_says_its_weights_are_a_fallback(tiny_llama, tmp_path):
    from studio.export.exporting import export_run

    result = train_tiny(tiny_config(tiny_llama, "train.learning_rate=1e4", "train.max_grad_norm=0",
                                    "train.max_steps=12", "train.save_steps=2"), tmp_path)
    assert result.state == "diverged"
    report = export_run(result.run_dir, ("f16",)).reports[0]
    run_check = next(c for c in report.checks if c.name == "run")
    assert run_check.status == "warn" and f"diverged at step {result.step}" in run_check.detail
    assert report.state != "passed", "a diverged run's file is never a plain pass"


def test_an_adapter_saved_without_its_trained_tensors_fails_the_run(tiny_llama, tmp_path, monkeypatch):
    # What sharded training once did: PEFT picked none of the adapter's tensors out of the model's weights.
    import peft.peft_model

    monkeypatch.setattr(peft.peft_model, "get_peft_model_state_dict", lambda *args, **kwargs: {})
    with pytest.raises(TrainingError, match=r"The adapter was saved with 0 of its 28 trained LoRA tensors"):
        train_tiny(tiny_config(tiny_llama, "train.max_steps=2", "train.save_steps=10"), tmp_path)
    run = next(tmp_path.iterdir())
    assert read_status(run)["state"] == "failed" and not (run / "adapter").exists()
    assert "saved with 0 of its 28" in [e for e in read_events(run / "events.jsonl") if e.kind == "end"][-1].message


def test_after_divergence_a_checkpoint_of_weights_known_bad_is_not_kept(tmp_path):
    """Checkpoints 2 and 4 are whole; the loss already gave the weights of step 3 away: checkpoint-2 is kept."""
    import json
    from types import SimpleNamespace

    import torch
    from safetensors.torch import save_file

    from studio.train.checkpoints import keep_last_good_checkpoint

    for step in (2, 4):
        folder = tmp_path / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        torch.save({}, folder / "optimizer.pt")
        save_file({"lora_A": torch.full((2, 2), float(step))}, folder / "adapter_model.safetensors")
    cfg = SimpleNamespace(lora=SimpleNamespace(enabled=True))
    tokenizer = SimpleNamespace(chat_template=None, save_pretrained=lambda folder: None)
    template = SimpleNamespace(jinja="{{ messages }}")
    assert keep_last_good_checkpoint(tmp_path, cfg, tokenizer, template, before_step=3) == "checkpoint-2"
    from safetensors.torch import load_file

    assert load_file(tmp_path / "adapter" / "adapter_model.safetensors")["lora_A"][0, 0] == 2.0
    assert keep_last_good_checkpoint(tmp_path, cfg, tokenizer, template, before_step=2) is None
    assert keep_last_good_checkpoint(tmp_path, cfg, tokenizer, template) == "checkpoint-4"
