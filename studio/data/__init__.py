"""Data: read sources (files, folders, hub datasets), detect formats, render templates and masks, preview.

    sources.py   data.path -> rows: files, globs, saved folders, hub datasets, malformed rows skipped with file:line
    files.py     the reader of each file type (jsonl, json, csv/tsv, parquet, txt) -> Row or Skipped
    bounded.py   bounded reading: rows over data.max_row_chars, deep nesting, NaN never held whole
    formats.py   format detection, rows -> conversations
    building.py  the shape of row each method trains on; tokenized, cut and split into train and eval
    pairs.py     preference pairs and labelled answers as token ids (dpo, orpo, kto)
    prompts.py   prompt rows and the columns rewards read (grpo)
    templates.py prompt templates (model's own, gallery, Jinja, format strings) and label masks
    preview.py   what a row trains on, token by token, and the data's statistics
"""
