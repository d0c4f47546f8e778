"""A handler with its inputs and outputs, for the events app.py attaches across tabs.

A tab's `wire()` makes them (they read the whole run form, which exists only
once every tab is built); app.py attaches them to the page load or to a tab
being opened:

    page.select(*train.refresh, api_name="train_runs")
    app.load(*train.poll, api_visibility="private")
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple


class Hook(NamedTuple):
    fn: Callable
    inputs: Any  # a component, a list of them, or None
    outputs: Any
