"""Several training processes (train.devices=cpu:2, the gloo backend): the path several GPUs take, on a CPU.

The processes are real: torch.distributed.run starts them, DDP averages their
gradients, and each test checks what a user sees (the run folder, its events,
its state) and that no process is left behind.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import psutil
import pytest
import torch
from conftest import tiny_config, train_tiny

from studio.errors import ConfigError, TrainingError
from studio.events import MemorySink, read_events

# batch 2, accumulating 2: a step sees 4 rows, alone or as 2 processes of 1 batch each
SAME_GLOBAL_BATCH = ("train.batch_size=2", "train.grad_accum=2", "train.max_steps=6", "train.save_steps=3")


def _losses(run_dir) -> list[float]:
    return [e.loss for e in read_events(run_dir / "events.jsonl") if e.kind == "log"]


def _tokens(run_dir) -> list[int]:
    """Tokens trained on between logs, from each log's tokens/s and elapsed time."""
    logs = [e for e in read_events(run_dir / "events.jsonl") if e.kind == "log"]
    return [round(e.tokens_per_second * (e.elapsed_s - before))
            for e, before in zip(logs, [0.0] + [e.elapsed_s for e in logs])]


def _rank_processes() -> list[psutil.Process]:
    """Processes of a several-process run still alive under this test process."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "studio.train.rank" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.fixture(scope="module")
def two_process_run(tiny_llama, tmp_path_factory):
    return train_tiny(tiny_config(tiny_llama, *SAME_GLOBAL_BATCH, "train.devices=cpu:2"),
                      tmp_path_factory.mktemp("ddp-runs"))


@pytest.fixture(scope="module")
def one_process_run(tiny_llama, tmp_path_factory):
    return train_tiny(tiny_config(tiny_llama, *SAME_GLOBAL_BATCH), tmp_path_factory.mktemp("alone-runs"))


def test_two_processes_train_as_one_with_the_same_global_batch(two_process_run, one_process_run):
    run_dir = two_process_run.run_dir
    assert two_process_run.state == "completed" and two_process_run.step == 6
    assert _losses(run_dir) == pytest.approx(_losses(one_process_run.run_dir), rel=1e-4)
    assert _tokens(run_dir) == pytest.approx(_tokens(one_process_run.run_dir), abs=1), "every process's tokens"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    events = read_events(run_dir / "events.jsonl")
    stages = [e.message for e in events if e.kind == "stage"]
    assert "Training in 2 processes on the CPU, data parallel (DDP)" in stages
    assert any("accumulates 1 batch of 2: a step sees 4 rows, as on one device" in m for m in stages)
    log = next(e for e in events if e.kind == "log")
    assert len(log.memory["devices"]) == 2 and all(d["process_rss"] > 0 for d in log.memory["devices"])
    assert [e.kind for e in events].count("end") == 1 and "completed" in events[-1].message
    assert not _rank_processes()


def test_compiled_layers_train_in_two_processes_as_uncompiled_ones_in_one(tiny_llama, one_process_run, tmp_path):
    # As on several GPUs, where compiled layers are the default: each process compiles its own.
    result = train_tiny(tiny_config(tiny_llama, *SAME_GLOBAL_BATCH, "train.devices=cpu:2", "train.compile_layers=true"),
                        tmp_path)
    assert result.state == "completed" and result.step == 6
    assert _losses(result.run_dir) == pytest.approx(_losses(one_process_run.run_dir), rel=1e-4)
    stages = [e.message for e in read_events(result.run_dir / "events.jsonl") if e.kind == "stage"]
    assert "Compiled decoder layers: 2 (torch.compile; the first steps include compiling them)." in stages
    assert not _rank_processes()


def test_the_adapter_of_two_processes_is_the_adapter_of_one_and_chats(two_process_run, one_process_run):
    from safetensors.torch import load_file

    from studio.chat.session import ChatSession

    ours, alone = (load_file(run.run_dir / "adapter" / "adapter_model.safetensors")
                   for run in (two_process_run, one_process_run))
    assert ours.keys() == alone.keys()
    for name in ours:  # tensor by tensor within 0.1% (Adam can turn a rounding difference of a near-zero
        # gradient into one weight's full step: an element-wise bound fails on some CPUs, the norm's does not)
        assert (ours[name] - alone[name]).norm() <= 1e-3 * alone[name].norm(), name
    session = ChatSession.open(str(two_process_run.run_dir))
    try:
        assert "".join(session.stream([{"role": "user", "content": "Name a colour."}], "tuned"))
    finally:
        session.close()


def test_stop_ends_every_process_at_the_same_step_and_resume_goes_on_alone(tiny_llama, tmp_path):
    from studio.train.training import run_training

    stop = threading.Event()

    def stop_at_step_2(event):
        if event.kind == "log" and event.step == 2:
            stop.set()

    cfg = tiny_config(tiny_llama, "train.batch_size=2", "train.max_steps=40", "train.save_steps=100",
                      "train.devices=cpu:2")
    stopped = train_tiny(cfg, tmp_path, stop=stop, sink=stop_at_step_2)
    run_dir = stopped.run_dir
    assert stopped.state == "stopped" and 2 <= stopped.step < 40
    ends = {rank: [e for e in read_events(run_dir / "ranks" / f"rank-{rank}.jsonl") if e.kind == "end"][-1]
            for rank in (0, 1)}
    assert ends[0].step == ends[1].step == stopped.step  # no process stepped on alone
    assert (run_dir / "checkpoints" / f"checkpoint-{stopped.step}").is_dir()
    assert not _rank_processes()

    resumed = run_training(run_dir, lambda e: None, resume=True, changes=["train.devices=cpu"])
    assert resumed.state == "completed" and resumed.step == 40
    assert "devices: cpu\n" in (run_dir / "config.yaml").read_text()


def test_a_run_of_one_child_process_trains_as_a_process_alone(tiny_llama, tmp_path):
    """One GPU of several, or a GPU run the studio starts, is one process under the launcher: it must not look
    like one process of a distributed run, which layer-wise GaLore is refused in."""
    from dataclasses import replace

    from studio.runs import create_run_dir
    from studio.train.parallel import train_in_ranks
    from studio.train.placement import plan_placement

    cfg = tiny_config(tiny_llama, "train.method=galore", "lora.enabled=false", "galore.layerwise=true",
                      "train.max_steps=2", "train.save_steps=2")
    run_dir = create_run_dir(cfg, tmp_path)
    placement = replace(plan_placement(cfg), in_process=False)
    result = train_in_ranks(run_dir, placement, MemorySink(), threading.Event(), None)
    assert result.state == "completed", result
    assert not _rank_processes()


def test_a_killed_process_fails_the_run_with_its_rank_and_leaves_none_behind(tiny_llama, tmp_path):
    killed = []

    def kill_rank_1(event):
        if event.kind == "log" and not killed:
            rank_1 = next(p for p in _rank_processes() if p.environ().get("RANK") == "1")
            os.kill(rank_1.pid, signal.SIGKILL)
            killed.append(rank_1.pid)

    cfg = tiny_config(tiny_llama, "train.max_steps=200", "train.batch_size=2", "train.devices=cpu:2")
    with pytest.raises(TrainingError, match=r"process 1 of 2 failed: .*killed by signal 9 \(SIGKILL\)"):
        train_tiny(cfg, tmp_path, sink=kill_rank_1)
    run_dir = next(tmp_path.iterdir())
    from studio.runs import run_state

    assert run_state(run_dir).state == "failed" and "process 1 of 2" in run_state(run_dir).status["error"]
    assert not _rank_processes()
    assert read_events(run_dir / "events.jsonl")[-1].extra["state"] == "failed"


def test_the_first_process_to_report_an_error_is_named(tmp_path):
    from studio.events import Event, JsonlSink
    from studio.train.parallel import failed_rank

    JsonlSink(tmp_path / "rank-0.jsonl")(Event("log", step=1, loss=2.0))
    JsonlSink(tmp_path / "rank-1.jsonl")(Event("end", message="Training failed: the disk is full",
                                                extra={"state": "failed", "error": "No space left on the disk",
                                                       "error_type": "DiskSpaceError"}))
    assert failed_rank(tmp_path, 2) == (1, "No space left on the disk", "DiskSpaceError")
    from studio.errors import DiskSpaceError, TrainingError
    from studio.train.parallel import _error_class

    assert _error_class("DiskSpaceError") is DiskSpaceError and _error_class("RuntimeError") is TrainingError
    (tmp_path / "rank-1.jsonl").unlink()
    (tmp_path / "launcher.log").write_text("Some output\nnothing else\n")
    rank, error, _ = failed_rank(tmp_path, 2)
    assert rank is None and "ended without a report" in error and "nothing else" in error


def test_where_a_run_trains():
    from studio.recipes import from_dict
    from studio.train.placement import plan_placement

    def plan(gpus, fits=True, **train):
        return plan_placement(from_dict({"train": train}), gpu_count=gpus, fits_one_card=fits)

    assert plan(0).describe() == "one process on the CPU" and plan(0).in_process
    two = plan(2, grad_accum=4)
    assert (two.processes, two.gpus, two.engine, two.grad_accum) == (2, (0, 1), "ddp", 2)
    assert plan(2, fits=False).engine == "fsdp"
    assert plan(2, parallel="ddp", fits=False).engine == "ddp"
    assert plan(4, devices="1,3").gpus == (1, 3)
    odd = plan(2, grad_accum=3)
    assert odd.grad_accum == 3 and "a step sees 12 rows (2 times one device's 6)" in odd.notes[0]
    assert plan(2, devices="cpu").describe() == "one process on the CPU"
    with pytest.raises(ConfigError, match=r"model.load_in=8bit\) cannot be sharded \(FSDP\): use model.load_in=4bit"):
        plan_placement(from_dict({"model": {"load_in": "8bit"}, "train": {"parallel": "fsdp"}}), gpu_count=2,
                       fits_one_card=True)
    with pytest.raises(ConfigError, match=r"does not fit one card \(fit estimate\), and 8-bit weights"):
        plan_placement(from_dict({"model": {"load_in": "8bit"}}), gpu_count=2, fits_one_card=False)
    assert plan(1).in_process and not plan(2, devices="0").in_process  # another GPU in sight: a child process
    assert not plan(2, devices="cpu").in_process  # the CPU on a GPU machine: a child process that sees no GPU
    with pytest.raises(ConfigError, match="adamw_8bit cannot step sharded"):
        plan(2, fits=False, optimizer="adamw_8bit")
    with pytest.raises(ConfigError, match="train.compile_layers is not used with sharding"):
        plan(2, fits=False, compile_layers=True)
    assert plan(2, compile_layers=True).engine == "ddp"
    with pytest.raises(ConfigError, match="names GPU 2, but CUDA sees 2 GPUs \\(0, 1\\)"):
        plan(2, devices="0,2")
    with pytest.raises(ConfigError, match="names GPU 0, but CUDA sees no GPU"):
        plan(0, devices="0")
    with pytest.raises(ConfigError, match=r"galore.layerwise .* \(train.devices=0\)"):
        plan_placement(from_dict({"model": {"load_in": "16bit"}, "lora": {"enabled": False},
                                  "train": {"method": "galore", "grad_accum": 1},
                                  "galore": {"layerwise": True}}), gpu_count=2, fits_one_card=True)


def test_device_settings_are_checked_in_recipes():
    from studio.recipes import from_dict

    with pytest.raises(ConfigError, match="not a device list: use auto, cpu, cpu:2 or GPU indices such as 0,1"):
        from_dict({"train": {"devices": "gpu0"}})
    with pytest.raises(ConfigError, match="names a GPU twice"):
        from_dict({"train": {"devices": "0,0"}})
    with pytest.raises(ConfigError, match="parallel=fsdp shards the model across GPUs"):
        from_dict({"train": {"devices": "cpu:2", "parallel": "fsdp"}})
    assert from_dict({"train": {"devices": 1}}).train.devices == "1"  # YAML reads `devices: 1` as a number


def test_the_launch_command_of_one_machine_and_of_several(tmp_path):
    from studio.train.parallel import rank_command, rank_environment
    from studio.train.placement import Placement

    placement = Placement(2, (0, 1), "ddp", 2)
    one = rank_command(tmp_path / "run", placement)
    assert one[1:] == ["-m", "torch.distributed.run", "--nproc-per-node=2", "--max-restarts=0", "--standalone", "-m",
                       "studio.train.rank", str(tmp_path / "run")]
    several = rank_command(tmp_path / "run", placement, tmp_path / "run" / "checkpoints" / "checkpoint-4", nodes=2,
                           node_rank=1, rendezvous="10.0.0.1:29500")
    assert {"--nnodes=2", "--node-rank=1", "--rdzv-backend=c10d", "--rdzv-endpoint=10.0.0.1:29500",
            "--rdzv-id=run"} <= set(several)
    assert several[-2:] == ["--checkpoint", str(tmp_path / "run" / "checkpoints" / "checkpoint-4")]
    with pytest.raises(ConfigError, match="host:port"):
        rank_command(tmp_path / "run", placement, nodes=2, rendezvous="10.0.0.1")
    env = rank_environment(placement, {"PATH": "/bin"})
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and env["STUDIO_PARALLEL"] == "ddp"
    # a studio started on GPUs 2 and 3 calls them 0 and 1: its processes get 2 and 3
    assert rank_environment(placement, {"CUDA_VISIBLE_DEVICES": "2,3"})["CUDA_VISIBLE_DEVICES"] == "2,3"
    cpu = rank_environment(Placement(2, (), "ddp", 1), {})
    assert cpu["CUDA_VISIBLE_DEVICES"] == "" and int(cpu["OMP_NUM_THREADS"]) >= 1
    root = str(Path(__file__).resolve().parent.parent)
    assert env["PYTHONPATH"] == root  # the processes find the studio whatever folder it was started in


def test_the_train_tab_starts_a_run_of_two_processes(tiny_llama, tmp_path):
    from gradio_client import Client
    from test_ui import free_port, wait_for

    from studio.services import Studio
    from studio.ui.app import serve

    port = free_port()
    app = serve(Studio(runs_dir=tmp_path), port=port, block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        notice = client.predict(api_name="/start_training", model_name_or_path=str(tiny_llama), name="two",
                                train_max_steps=4, train_batch_size=2, train_grad_accum=2, data_max_samples=32,
                                train_devices="cpu:2")[0]
        assert notice.startswith("Started **"), notice
        final = wait_for(client, "/training_snapshot", ("Completed", "Failed"))[-1]
        assert "Completed" in final[0], final[0]
        assert "**Process 0** RAM" in final[4] and "**Process 1** RAM" in final[4]
        assert {"process 0 RAM", "process 1 RAM"} <= {point[2] for point in final[5]["data"]}
    finally:
        app.close()
    assert not _rank_processes()


def test_two_machines_from_the_printed_commands(tiny_llama, tmp_path):
    """The commands `launch.py train --nodes 2` prints, run as two 'machines' on this one (one process each)."""
    import subprocess
    import sys

    from test_ui import free_port

    from studio.recipes import save_config
    from studio.runs import read_status

    recipe = tmp_path / "tiny.yaml"
    save_config(tiny_config(tiny_llama, "train.max_steps=4", "train.batch_size=2", "train.devices=cpu"), recipe)
    root = Path(__file__).resolve().parent.parent
    printed = subprocess.run([sys.executable, "launch.py", "train", str(recipe), "--nodes", "2", "--rendezvous",
                              f"127.0.0.1:{free_port()}", "--runs-dir", str(tmp_path / "shared")],
                             cwd=root, capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    commands = [line for line in printed.stdout.splitlines() if "torch.distributed.run" in line]
    assert len(commands) == 2 and "--node-rank=0" in commands[0] and "--node-rank=1" in commands[1]
    machines = [subprocess.Popen(command, shell=True, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
                for command in commands]
    assert [m.wait(timeout=300) for m in machines] == [0, 0]
    run_dir = next((tmp_path / "shared").iterdir())
    assert read_status(run_dir)["state"] == "completed" and (run_dir / "adapter").is_dir()
    events = read_events(run_dir / "events.jsonl")
    assert [e.step for e in events if e.kind == "log"] == [1, 2, 3, 4] and len(events[-3].memory["devices"]) == 2


def test_killing_the_studio_ends_its_training_processes(tiny_llama, tmp_path):
    """kill -9 of the process that started the run (no chance to clean up): its ranks end too, the run reads
    interrupted."""
    import subprocess
    import sys
    import time

    from studio.recipes import save_config
    from studio.runs import run_state

    recipe = tmp_path / "tiny.yaml"
    save_config(tiny_config(tiny_llama, "train.max_steps=500", "train.batch_size=2", "train.devices=cpu:2"), recipe)
    root = Path(__file__).resolve().parent.parent
    studio = subprocess.Popen([sys.executable, "launch.py", "train", str(recipe), "--runs-dir", str(tmp_path / "runs")],
                              cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in studio.stdout:
        if "step 2/500" in line:
            break
    run_dir = next((tmp_path / "runs").iterdir())

    def ranks_of_the_run() -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter(["cmdline"]):
            if str(run_dir) in " ".join(process.info["cmdline"] or ()):
                found.append(process)
        return found

    assert len(ranks_of_the_run()) >= 3  # the launcher and its two processes
    studio.kill()
    studio.wait()
    deadline = time.time() + 30
    while ranks_of_the_run() and time.time() < deadline:
        time.sleep(0.5)
    assert not ranks_of_the_run()
    assert run_state(run_dir).state == "interrupted"


def test_preference_and_reward_methods_train_in_two_processes(tiny_llama, tmp_path):
    from conftest import ROOT

    dpo = tiny_config(tiny_llama, "train.method=dpo", f"data.path={ROOT / 'assets' / 'sample_preferences.jsonl'}",
                      "train.max_steps=3", "train.batch_size=2", "train.devices=cpu:2")
    grpo = tiny_config(tiny_llama, "train.method=grpo", f"data.path={ROOT / 'assets' / 'sample_arithmetic.jsonl'}",
                       "data.template=plain", "train.batch_size=8", "train.grad_accum=1", "grpo.num_generations=8",
                       "grpo.max_completion_length=4", "train.save_steps=100", "train.max_steps=2",
                       "train.devices=cpu:2")
    for cfg in (dpo, grpo):
        result = train_tiny(cfg, tmp_path / cfg.train.method)
        assert (result.state, result.step) == ("completed", cfg.train.max_steps)
        metrics = [e.extra.get("metrics", {}) for e in read_events(result.run_dir / "events.jsonl") if e.kind == "log"]
        assert metrics and metrics[-1], "the method's own values come back from rank 0"
    assert not _rank_processes()


def test_the_fit_estimate_of_one_card_when_the_model_is_sharded():
    from studio.fit import check_fit
    from studio.recipes import from_dict

    cfg = from_dict({"model": {"name_or_path": "meta-llama/Llama-3.1-8B-Instruct", "load_in": "16bit"}})
    whole, _ = check_fit(cfg, 12.0, on_gpu=True)
    half, sentence = check_fit(cfg, 12.0, on_gpu=True, shards=2)
    assert half.weights_gib == pytest.approx(whole.weights_gib / 2)
    assert half.trainable_gib == pytest.approx(whole.trainable_gib / 2)
    assert half.activations_gib == whole.activations_gib and sentence


def test_sharded_training_needs_the_memory_to_load_the_model_in_every_process():
    from studio.recipes import from_dict, replace_section
    from studio.train.placement import plan_placement

    cfg = from_dict({"model": {"name_or_path": "meta-llama/Llama-3.1-8B-Instruct", "load_in": "16bit"},
                     "train": {"parallel": "fsdp"}})
    with pytest.raises(ConfigError, match=r"each process's memory .*: 2 x 15.0 GiB, and 24.0 GiB of RAM is free"):
        plan_placement(cfg, gpu_count=2, fits_one_card=False, free_ram_gib=24.0)
    assert plan_placement(cfg, gpu_count=2, fits_one_card=False, free_ram_gib=40.0).engine == "fsdp"
    in_float32 = replace_section(cfg, "model", dtype="float32")
    with pytest.raises(ConfigError, match=r"2 x 29.9 GiB, and 40.0 GiB of RAM is free"):
        plan_placement(in_float32, gpu_count=2, fits_one_card=False, free_ram_gib=40.0)


def test_4bit_weights_are_sharded_when_each_card_can_load_them_whole():
    from studio.recipes import apply_overrides, from_dict
    from studio.train.placement import plan_placement

    cfg = from_dict({"model": {"name_or_path": "meta-llama/Llama-3.1-8B-Instruct", "load_in": "4bit"}})
    assert plan_placement(cfg, gpu_count=2, fits_one_card=False, card_gib=8.0).engine == "fsdp"
    with pytest.raises(ConfigError, match=r"loads the whole quantized model on each GPU .*: 5\.\d GiB of 4-bit "
                                          r"weights, and a card offers 4\.0 GiB"):
        plan_placement(cfg, gpu_count=2, fits_one_card=False, card_gib=4.0)
    for override in ("lora.dropout=0.05", "lora.use_dora=true", "train.fused_lora=false"):
        with pytest.raises(ConfigError, match=r"Sharded 4-bit training \(FSDP\) runs through the fused LoRA layers, "
                                              r"but .*: set lora.dropout=0"):
            plan_placement(apply_overrides(cfg, [override]), gpu_count=2, fits_one_card=False, card_gib=8.0)


def test_a_checkpoint_of_sharded_training_resumes_only_sharded(trained_run, tmp_path):
    import shutil

    import torch

    from studio.runs import load_run_config
    from studio.train.checkpoints import latest_checkpoint
    from studio.train.training import run_training

    run = Path(shutil.copytree(trained_run, tmp_path / trained_run.name))
    newest = latest_checkpoint(run)
    torch.save({}, newest / "optimizer.bin")  # what FSDP writes in place of optimizer.pt
    (newest / "optimizer.pt").unlink()
    with pytest.raises(ConfigError, match=f"{newest.name} was written by sharded \\(FSDP\\) training, and this resume "
                                          "would train one process on the CPU: resume it with train.parallel=fsdp"):
        run_training(run, MemorySink(), resume=True, changes=["train.max_steps=20"])
    # The refused resume changed nothing: the same change is still a change on the right devices.
    assert load_run_config(run).train.max_steps == load_run_config(trained_run).train.max_steps != 20


def test_processes_that_do_not_stop_after_stop_are_ended(tiny_llama, tmp_path, monkeypatch):
    from studio.runs import run_state
    from studio.train import parallel

    monkeypatch.setattr(parallel, "STOP_GRACE_S", 0)  # no time at all to reach the end of the step
    stop = threading.Event()

    def stop_at_first_log(event):
        if event.kind == "log":
            stop.set()

    cfg = tiny_config(tiny_llama, "train.max_steps=500", "train.batch_size=2", "train.devices=cpu:2")
    with pytest.raises(TrainingError, match="had not stopped 0 minutes after Stop .* Resume continues"):
        train_tiny(cfg, tmp_path, stop=stop, sink=stop_at_first_log)
    run_dir = next(tmp_path.iterdir())
    assert run_state(run_dir).state == "interrupted" and not _rank_processes()


def _adapter(run_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("load_in", ["16bit", "4bit"])
def test_sharded_training_on_two_gpus_trains_and_saves_what_data_parallel_does(tiny_llama, tmp_path, load_in):
    """FSDP2 (4-bit: the packed weights split across the cards) against DDP: the same losses, the same adapter."""
    # Plain SGD: the adapter moves by the gradients themselves, so rounding in another order (bf16 products,
    # gathered and reduced differently) stays a rounding difference. Adam's first steps move every entry by
    # about the learning rate whatever the gradient's size, so a gradient near zero that differs in sign
    # by rounding made a whole step of difference.
    common = (f"model.load_in={load_in}", *SAME_GLOBAL_BATCH, "train.devices=0,1", "train.gradient_checkpointing=true",
              "train.compile_layers=false", "train.optimizer=sgd", "train.learning_rate=0.05")
    ddp = train_tiny(tiny_config(tiny_llama, *common, "train.parallel=ddp"), tmp_path / "ddp").run_dir
    result = train_tiny(tiny_config(tiny_llama, *common, "train.parallel=fsdp"), tmp_path / "fsdp")
    assert result.state == "completed", result
    sharded = result.run_dir
    stages = [e.message for e in read_events(sharded / "events.jsonl") if e.kind == "stage"]
    assert any("sharded (FSDP2)" in m for m in stages), stages
    assert len(_losses(sharded)) == len(_losses(ddp)) == 6
    assert _losses(sharded) == pytest.approx(_losses(ddp), abs=0.02)
    want, got = _adapter(ddp), _adapter(sharded)
    assert sorted(got) == sorted(want), (sorted(got)[:4], sorted(want)[:4])
    # A misnamed adapter fails on its keys; an untrained one on its lora_B, all zero: 1.0 away.
    errors = {key: ((got[key].float() - want[key].float()).norm() / want[key].float().norm()).item() for key in want}
    worst = sorted(errors.items(), key=lambda item: -item[1])[:5]
    assert worst[0][1] < 0.05, worst


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_studio_trains_on_a_gpu_in_a_child_process(tiny_llama, tmp_path):
    """A GPU step is mostly Python launching kernels: the studio's server threads stay out of its interpreter."""
    import time

    from studio.runs import run_state
    from studio.services import Studio

    studio = Studio(runs_dir=tmp_path)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.max_memory_allocated()
    run_dir = studio.start_training(tiny_config(tiny_llama, "train.devices=0", "train.max_steps=4"))
    while studio.jobs.busy:
        time.sleep(0.2)
    assert run_state(run_dir).state == "completed"
    stages = [e.message for e in read_events(run_dir / "events.jsonl") if e.kind == "stage"]
    assert "Training in one process on GPU 0" in stages, stages
    memory = [e.memory for e in read_events(run_dir / "events.jsonl") if e.kind == "log" and e.memory]
    assert any(gpu.get("gpu_peak") for m in memory for gpu in m.get("devices") or [m]), memory  # the live readout
    assert torch.cuda.max_memory_allocated() == before  # the weights and steps were the child's
    assert not _rank_processes()


@pytest.mark.parametrize("setup, intact", [("studio", True), ("before", False)])
def test_sharded_4bit_weights_are_gathered_bit_for_bit(tiny_llama, setup, intact):
    """FSDP2 gathers a layer through a copy that, on CUDA, reads a buffer of one 16-bit dtype as numbers and
    rewrites every NaN pattern among the packed 4-bit bytes. The studio stores them in another dtype than the
    rest of the layer, which FSDP gathers as bytes: the same gradients as the whole model. Stored as bf16 like
    the rest (as before), the copy made as on CUDA changes the weights: the check can fail."""
    import re
    import subprocess
    import sys

    from conftest import ROOT

    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(ROOT / "tests" / "fsdp_gather_worker.py"), str(tiny_llama), setup],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    found = re.search(r"max relative gradient error ([\d.]+)", done.stdout)
    assert found, done.stdout[-3000:] + done.stderr[-3000:]
    assert (float(found.group(1)) < 0.02) == intact, found.group(0)


def test_sharded_4bit_training_refuses_layers_that_fsdp_would_gather_as_numbers(tiny_llama):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from studio.train.sharding import packed_weights_policy

    def lora_model(storage=None):
        quantization = storage and BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16,
                                                      bnb_4bit_quant_storage=storage)
        model = AutoModelForCausalLM.from_pretrained(tiny_llama, quantization_config=quantization,
                                                     dtype=torch.bfloat16, device_map={"": "cpu"})
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"]))
        for parameter in model.parameters():  # every parameter bf16: TRL keeps a quantized model's LoRA in bf16
            parameter.data = parameter.data if parameter.dtype == storage else parameter.data.to(torch.bfloat16)
        return model

    assert packed_weights_policy(lora_model(torch.float16)) is not None  # bf16 layers, fp16 bytes: mixed
    with pytest.raises(TrainingError, match=r"every parameter of .*layers\.0 is torch.bfloat16: FSDP would gather"):
        packed_weights_policy(lora_model(torch.bfloat16))
    assert packed_weights_policy(lora_model()) is None  # 16-bit weights: accelerate's policy


@pytest.fixture(scope="module")
def zero3_run(tiny_llama, tmp_path_factory):
    return train_tiny(tiny_config(tiny_llama, *SAME_GLOBAL_BATCH, "train.devices=cpu:2",
                                  "train.parallel=deepspeed-zero3"), tmp_path_factory.mktemp("zero3-runs"))


def _deepspeed_run(request, stage: int):
    if stage == 3:
        return request.getfixturevalue("zero3_run")
    tiny_llama, tmp = request.getfixturevalue("tiny_llama"), request.getfixturevalue("tmp_path")
    return train_tiny(tiny_config(tiny_llama, *SAME_GLOBAL_BATCH, "train.devices=cpu:2",
                                  "train.parallel=deepspeed-zero2"), tmp)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_trains_as_one_process_with_the_same_global_batch(request, stage, one_process_run):
    from safetensors.torch import load_file

    from studio.train.checkpoints import checkpoint_engine, checkpoint_problem, deepspeed_processes

    result = _deepspeed_run(request, stage)
    assert result.state == "completed" and result.step == 6
    run_dir = result.run_dir
    stages = [e.message for e in read_events(run_dir / "events.jsonl") if e.kind == "stage"]
    assert f"Training in 2 processes on the CPU, {'sharded (DeepSpeed ZeRO-3)' if stage == 3 else 'DeepSpeed ZeRO-2'}" \
        in stages
    assert _losses(run_dir) == pytest.approx(_losses(one_process_run.run_dir), rel=1e-4)
    # zero3 gathers the weights whole to save them. The same adapter up to sums in another order (Adam turns
    # their last bits into whole steps for entries whose gradient is near zero, hence a tensor's norm)
    ours, alone = (load_file(run.run_dir / "adapter" / "adapter_model.safetensors")
                   for run in (result, one_process_run))
    assert ours.keys() == alone.keys()
    for name in ours:
        assert ((ours[name] - alone[name]).norm() / alone[name].norm()).item() < 1e-3, name
    newest = run_dir / "checkpoints" / "checkpoint-6"
    assert checkpoint_problem(newest) is None
    assert checkpoint_engine(newest) == f"deepspeed-zero{stage}" and deepspeed_processes(newest) == 2
    assert not _rank_processes()


def test_a_deepspeed_checkpoint_resumes_in_as_many_processes_and_nowhere_else(zero3_run, tmp_path):
    import shutil

    from studio.runs import load_run_config
    from studio.train.checkpoints import checkpoint_problem
    from studio.train.training import run_training

    run = Path(shutil.copytree(zero3_run.run_dir, tmp_path / zero3_run.run_dir.name))
    with pytest.raises(ConfigError, match=r"checkpoint-6 was written by DeepSpeed ZeRO-3 in 2 processes, and this "
                                          r"resume would train one process on the CPU: resume it with "
                                          r"train.parallel=deepspeed-zero3 on 2 devices \(train.devices\)"):
        run_training(run, MemorySink(), resume=True, changes=["train.max_steps=8", "train.devices=cpu"])
    with pytest.raises(ConfigError, match=r"in 2 processes, and this resume would train 2 processes on the CPU, "
                                          r"data parallel \(DDP\)"):
        run_training(run, MemorySink(), resume=True, changes=["train.max_steps=8", "train.parallel=ddp"])
    assert load_run_config(run).train.max_steps == 6  # refused: nothing changed
    sink = MemorySink()
    result = run_training(run, sink, resume=True, changes=["train.max_steps=8"])
    assert result.state == "completed" and result.step == 8
    assert [e.step for e in sink.events() if e.kind == "log"] == [7, 8]
    assert checkpoint_problem(run / "checkpoints" / "checkpoint-8") is None
    # DeepSpeed's states cut short: the checkpoint counts as damaged, and resume passes it by
    states = next((run / "checkpoints" / "checkpoint-8").glob("global_step*/zero_pp_rank_1_mp_rank_00_optim_states.pt"))
    states.write_bytes(states.read_bytes()[:100])
    assert "damaged (cut short" in checkpoint_problem(run / "checkpoints" / "checkpoint-8")
    assert not _rank_processes()


def test_deepspeed_refuses_what_it_does_not_train():
    from studio.recipes import from_dict
    from studio.train.placement import plan_placement

    def plan(**sections):
        sections["train"] = {"parallel": "deepspeed-zero2", **sections.get("train", {})}
        return plan_placement(from_dict(sections), gpu_count=2, fits_one_card=True)

    assert plan().describe() == "2 processes on GPU 0, 1, DeepSpeed ZeRO-2"
    with pytest.raises(ConfigError, match="trains 16-bit weights, but model.load_in is 4bit: use train.parallel=fsdp"):
        plan(model={"load_in": "4bit"})
    with pytest.raises(ConfigError, match="train.method=grpo is not trained under DeepSpeed"):
        plan(train={"method": "grpo"})
    with pytest.raises(ConfigError, match="train.optimizer=adamw_8bit is not stepped under DeepSpeed ZeRO"):
        plan(train={"optimizer": "adamw_8bit"})
    # ZeRO-3 moves the whole model to each GPU before splitting it: the weights must fit a card
    eight_b = from_dict({"model": {"name_or_path": "meta-llama/Llama-3.1-8B-Instruct"},
                         "train": {"parallel": "deepspeed-zero3"}})
    assert plan_placement(eight_b, gpu_count=2, fits_one_card=True, card_gib=24.0).engine == "deepspeed-zero3"
    with pytest.raises(ConfigError, match=r"ZeRO-3 moves the whole model to each GPU before splitting it: 15.0 GiB "
                                          r"of weights, and a card offers 12.0 GiB. Use train.parallel=fsdp"):
        plan_placement(eight_b, gpu_count=2, fits_one_card=True, card_gib=12.0)


def test_deepspeed_checkpoints_in_bf16_are_recognised_and_checked(tmp_path):
    """On a GPU in bf16, DeepSpeed names its optimizer states bf16_zero_pp_rank_K_...: the same checkpoint."""
    import json

    from safetensors.torch import save_file

    from studio.train.checkpoints import checkpoint_engine, checkpoint_problem, deepspeed_processes

    checkpoint = tmp_path / "checkpoint-6"
    states = checkpoint / "global_step6"
    states.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 6}))
    save_file({"lora_A": torch.ones(2, 2)}, checkpoint / "adapter_model.safetensors")
    (checkpoint / "latest").write_text("global_step6")
    for rank in range(2):
        torch.save({}, states / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
        torch.save({}, states / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")
    assert checkpoint_problem(checkpoint) is None
    assert checkpoint_engine(checkpoint) == "deepspeed-zero3" and deepspeed_processes(checkpoint) == 2
    (checkpoint / "latest").write_text("global_step9")  # names states that were never written
    assert "DeepSpeed's states (the folder its file `latest` names) are missing" in checkpoint_problem(checkpoint)
    (checkpoint / "latest").write_text("")
    assert "are missing" in checkpoint_problem(checkpoint)


@pytest.mark.parametrize("method", ["dpo", "orpo", "kto"])
def test_the_preference_methods_train_under_deepspeed_zero3(tiny_llama, tmp_path, method):
    from conftest import ROOT

    cfg = tiny_config(tiny_llama, f"train.method={method}", f"data.path={ROOT / 'assets' / 'sample_preferences.jsonl'}",
                      "train.max_steps=2", "train.batch_size=2", "train.save_steps=100", "train.devices=cpu:2",
                      "train.parallel=deepspeed-zero3")
    result = train_tiny(cfg, tmp_path)
    assert (result.state, result.step) == ("completed", 2)
    metrics = [e.extra.get("metrics", {}) for e in read_events(result.run_dir / "events.jsonl") if e.kind == "log"]
    assert metrics and metrics[-1], "the method's own values come back from rank 0"
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert not _rank_processes()


def test_nan_training_under_zero3_keeps_the_last_checkpoint_of_finite_weights(tiny_llama, tmp_path):
    """Before each checkpoint every process checks its part of each weight, and they agree on the answer (they
    save together). The tiny model's LoRA weights are below DeepSpeed's size for splitting: each process holds
    them whole here, so this runs the agreement, not a split weight."""
    from safetensors.torch import load_file

    from studio.runs import read_status
    from studio.train.checkpoints import latest_checkpoint

    # A checkpoint every step, a log every 6th: the weights turn non-finite before any log shows it.
    result = train_tiny(tiny_config(tiny_llama, "train.learning_rate=1e4", "train.max_grad_norm=0",
                                    "train.max_steps=12", "train.save_steps=1", "train.logging_steps=6",
                                    "train.save_total_limit=0", "train.batch_size=2", "train.grad_accum=2",
                                    "train.devices=cpu:2", "train.parallel=deepspeed-zero3"), tmp_path)
    assert result.state == "diverged" and result.step < 12
    good = latest_checkpoint(result.run_dir)
    assert good is not None and int(good.name.split("-")[1]) < result.step, "no checkpoint of the bad weights"
    assert f"The newest checkpoint from before the values went bad ({good.name}) is kept" in read_status(result.run_dir)["health"]
    kept = load_file(result.run_dir / "adapter" / "adapter_model.safetensors")
    assert all(t.isfinite().all() for t in kept.values())
    assert not _rank_processes()
