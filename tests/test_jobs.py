import threading
import time

import pytest

from studio.errors import BusyError, StudioError
from studio.events import Event
from studio.jobs import JobRunner


def test_one_job_at_a_time_with_snapshots_and_stop():
    jobs = JobRunner()
    started = threading.Event()

    def work(sink, stop):
        for step in range(1, 1000):
            sink(Event("log", step=step))
            started.set()
            if stop.wait(0.01):
                return None
        return None

    jobs.start("train", "demo", work)
    started.wait(5)
    with pytest.raises(BusyError, match="A train job \\(demo\\) is running"):
        jobs.start("export", "other", work)
    assert jobs.snapshot().running and jobs.snapshot().events[0].step == 1
    jobs.stop()
    final = jobs.wait(5)
    assert final.state == "stopped" and final.finished_at >= final.started_at


def test_a_failing_job_reports_its_error_and_frees_the_runner():
    jobs = JobRunner()

    def fail(sink, stop):
        raise StudioError("the data file is empty")

    jobs.start("train", "bad", fail)
    assert jobs.wait(5).state == "failed" and jobs.snapshot().error == "the data file is empty"
    jobs.start("train", "next", lambda sink, stop: time.sleep(0.01))
    assert jobs.wait(5).state == "completed"
