"""The studio: six tabs over the headless core, served on 127.0.0.1.

    studio = Studio(runs_dir=Path("runs"))
    app = build_app(studio)          # no server yet (tests build it this way)
    serve(studio, port=7860)         # python launch.py
    serve(studio, settings=serve_settings(7860, "0.0.0.0", None, None))   # python launch.py --listen
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from studio.safety import ServeSettings
from studio.services import Studio
from studio.ui import chat_tab, data_tab, evaluate_tab, export_tab, model_tab, train_tab

ASSETS = Path(__file__).resolve().parent.parent.parent / "assets"


def build_app(studio: Studio) -> gr.Blocks:
    form: dict = {}
    start = studio.start_config()  # the form starts as the quickstart recipe says
    with gr.Blocks(title="Fine-tuning studio", analytics_enabled=False) as app:
        gr.Markdown("## Fine-tuning studio\nModel → Data → Train → Chat → Export → Evaluate: a verified GGUF at the end, and which model to ship.",
                    elem_id="header")
        with gr.Tabs() as tabs:
            with gr.Tab("Model", id="model"):
                model = model_tab.build(studio, form, start)
            with gr.Tab("Data", id="data"):
                data = data_tab.build(studio, form, start)
            with gr.Tab("Train", id="train") as train_page:
                train = train_tab.build(studio, form, start)
            with gr.Tab("Chat", id="chat") as chat_page:
                chat = chat_tab.build(studio, form)
            with gr.Tab("Export", id="export") as export_page:
                export = export_tab.build(studio, form)
            with gr.Tab("Evaluate", id="evaluate") as evaluate_page:
                evaluate = evaluate_tab.build(studio, form)
        # Wired once every tab exists: handlers read the whole run form across tabs.
        model_tab.wire(studio, form, model)
        data_tab.wire(studio, form, data)
        train_tab.wire(studio, form, train)
        chat_tab.wire(studio, form, chat)
        export_tab.wire(studio, form, export, chat, tabs)
        evaluate_tab.wire(studio, form, evaluate, export, tabs)
        app.load(*model.fit_estimate, api_visibility="private")
        # Run lists are refreshed when a tab is opened, not by the timers: an open dropdown stays still.
        for page, tab, name in ((train_page, train, "train_runs"), (chat_page, chat, "chat_sources"),
                                (export_page, export, "export_runs"), (evaluate_page, evaluate, "evaluation_runs")):
            page.select(*tab.refresh, api_name=name)
        app.load(*chat.refresh, api_visibility="private")
        # A reload re-attaches: one poll draws the current (or last) job and restarts polling if it runs.
        for tab in (train, export, evaluate):
            app.load(*tab.poll, api_visibility="private")
        app.load(*train.restore, api_visibility="private")
    app.form_keys = list(form)  # the config keys the page can set (tests check that none is missing)
    return app


def serve(studio: Studio, port: int = 7860, block: bool = True, settings: ServeSettings | None = None) -> gr.Blocks:
    """Build and launch; returns the app (with `block=False` the call returns at once, for tests).

    Served on 127.0.0.1 unless `settings` listen beyond it, never through a public share link,
    and only to requests that name this server in their Host header.
    """
    settings = settings or ServeSettings(port=port)
    app = build_app(studio)
    app.queue(default_concurrency_limit=4)
    # A page on another site can point its own name at 127.0.0.1 (DNS rebinding); its requests
    # then carry that name as Host and are refused here.
    trusted_hosts = Middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts(), www_redirect=False)
    app.launch(server_name=settings.host, server_port=settings.port, share=False, auth=list(settings.auth) or None,
               enable_monitoring=False, ssr_mode=False, mcp_server=False, app_kwargs={"middleware": [trusted_hosts]},
               prevent_thread_lock=True, quiet=True,  # quiet: gradio's own lines suggest a public share link
               theme=gr.themes.Soft(primary_hue="emerald", neutral_hue="slate"),
               css_paths=[ASSETS / "studio.css"], inbrowser=False)
    if block:  # launch.py has said where the studio is
        app.block_thread()
    return app
