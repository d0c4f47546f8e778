"""The Gradio skin over the headless core: one module per tab. The only package that imports gradio."""
