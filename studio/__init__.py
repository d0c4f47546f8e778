"""Local LLM fine-tuning studio: the headless core (see README.md)."""
