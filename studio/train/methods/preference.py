"""dpo, orpo and kto through TRL's trainers, on rows the studio has tokenized (studio.data.pairs).

The reference of dpo and kto is the model before training: with LoRA, the same
weights with the adapter switched off (TRL does this for a PEFT model), so no
second copy is loaded; with full fine-tuning, its scores are computed once
before training starts. orpo has no reference.

TRL would tokenize the prompt and each answer again from text. The rows arrive
tokenized, so each trainer's dataset preparation is replaced by one that keeps
them as they are: the token preview is exactly what trains. ORPO's scoring is
replaced too, by TRL's fused LM head (no logits over the whole vocabulary).
These replace methods of TRL's trainers, so each is checked against the TRL
version it was read in.
"""

from __future__ import annotations

from pathlib import Path

from studio.config import RunConfig
from studio.train.methods.arguments import check_trl_method, finish_trainer, shared_options



def make_dpo_trainer(cfg: RunConfig, output_dir: Path, model, tokenizer, train_dataset, eval_dataset=None,
                     callbacks=(), **overrides):
    from trl import DPOConfig, DPOTrainer

    p = cfg.preference
    options = shared_options(cfg, output_dir, eval_dataset is not None)
    options.update(beta=p.beta, loss_type=[p.loss_type], label_smoothing=p.label_smoothing,
                   max_length=cfg.train.max_length, **_reference_options(cfg))
    options.update(overrides)
    trainer_class = _keeping_tokenized_rows(DPOTrainer, lambda trainer, dataset, args: dataset)
    trainer = trainer_class(model=model, args=DPOConfig(**options), train_dataset=train_dataset,
                            eval_dataset=eval_dataset, processing_class=tokenizer, callbacks=list(callbacks))
    return finish_trainer(trainer, cfg)


def make_kto_trainer(cfg: RunConfig, output_dir: Path, model, tokenizer, train_dataset, eval_dataset=None,
                     callbacks=(), **overrides):
    from trl import KTOConfig, KTOTrainer

    p = cfg.preference
    options = shared_options(cfg, output_dir, eval_dataset is not None)
    # The KL estimate pairs each answer with the previous row's prompt within a batch, so batches
    # must come in order (the rows were shuffled when the data was built).
    options.update(beta=p.beta, desirable_weight=p.desirable_weight, undesirable_weight=p.undesirable_weight,
                   max_length=cfg.train.max_length, train_sampling_strategy="sequential", **_reference_options(cfg))
    options.update(overrides)
    trainer_class = _keeping_tokenized_rows(KTOTrainer, _with_kl_completions)
    trainer = trainer_class(model=model, args=KTOConfig(**options), train_dataset=train_dataset,
                            eval_dataset=eval_dataset, processing_class=tokenizer, callbacks=list(callbacks))
    return finish_trainer(trainer, cfg)


def make_orpo_trainer(cfg: RunConfig, output_dir: Path, model, tokenizer, train_dataset, eval_dataset=None,
                      callbacks=(), **overrides):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    check_trl_method(ORPOTrainer, "tokenize_row")
    check_trl_method(ORPOTrainer, "concatenated_forward")

    class TokenizedORPOTrainer(ORPOTrainer):
        def tokenize_row(self, feature, model=None) -> dict:
            return _orpo_columns(feature)

        def concatenated_forward(self, model, batch):
            return _orpo_forward(self, model, batch)

    options = shared_options(cfg, output_dir, eval_dataset is not None)
    options.update(beta=cfg.preference.beta, max_length=cfg.train.max_length)
    options.update(overrides)
    # ORPO's trainer takes padding from its config; the model's pad token keeps chat and export alike.
    options.setdefault("padding_value", tokenizer.pad_token_id)
    trainer = TokenizedORPOTrainer(model=model, args=ORPOConfig(**options), train_dataset=train_dataset,
                                   eval_dataset=eval_dataset, processing_class=tokenizer, callbacks=list(callbacks))
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    add_fused_lm_head(base, outputs=("log_probs", "mean_logits"))
    return finish_trainer(trainer, cfg)


def _reference_options(cfg: RunConfig) -> dict:
    """Score the reference once before training when asked, and always with full fine-tuning (no second copy)."""
    return {"precompute_ref_log_probs": cfg.preference.precompute_reference or not cfg.lora.enabled}


def _keeping_tokenized_rows(trainer_class, prepare):
    """`trainer_class` whose dataset preparation is `prepare(trainer, dataset, args)` on already tokenized rows."""
    check_trl_method(trainer_class, "_prepare_dataset")

    class KeepingTokenizedRows(trainer_class):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return prepare(self, dataset, args)

    KeepingTokenizedRows.__name__ = trainer_class.__name__
    return KeepingTokenizedRows


def _with_kl_completions(trainer, dataset, args):
    """kto's mismatched answers for its KL estimate: each batch's answers shifted by one row, as TRL does."""
    if not trainer.calculate_KL:
        return dataset

    def shifted(batch):
        batch["KL_completion_ids"] = [batch["completion_ids"][-1]] + batch["completion_ids"][:-1]
        return batch

    return dataset.map(shifted, batched=True, batch_size=args.per_device_train_batch_size)


def _orpo_columns(feature: dict) -> dict:
    """The columns ORPO's trainer reads, from a tokenized pair: each side whole, its prompt masked in the labels."""
    prompt, out = feature["prompt_ids"], {}
    out["prompt_input_ids"], out["prompt_attention_mask"] = prompt, [1] * len(prompt)
    for side in ("chosen", "rejected"):
        answer = feature[f"{side}_ids"]
        out[f"{side}_input_ids"] = prompt + answer
        out[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
        out[f"{side}_labels"] = [-100] * len(prompt) + answer
    return out


def _orpo_forward(trainer, model, batch):
    """ORPO's scores of both sides through TRL's fused LM head, as its DPO and KTO trainers score them.

    ORPO's own forward computes the logits of every position over the whole
    vocabulary: 4 GiB more than SFT at the peak on an 8B model with a pair of
    2 x 2048 tokens. The fused head projects only the answer tokens, a tile at a
    time. The SFT term is the mean negative log-likelihood of the chosen
    answers' tokens (as the studio's SFT trains responses only; ORPO's own
    forward also counts the prompt's tokens).

    Returns what ORPO's loss reads: the average log-probability of each chosen
    and each rejected answer, their mean logits (for its logs), and the SFT term.
    """
    inputs = trainer.concatenated_inputs(batch, is_encoder_decoder=False, padding_value=trainer.padding_value,
                                         device=trainer.accelerator.device)
    labels = inputs["concatenated_labels"]
    out = model(inputs["concatenated_input_ids"], attention_mask=inputs["concatenated_attention_mask"],
                labels=labels, fused_lm_head=True, use_cache=False)
    scored = (labels[:, 1:] != -100).to(out.log_probs.dtype)
    counts = scored.sum(-1).clamp(min=1)
    sums = (out.log_probs * scored).sum(-1)
    average = sums / counts
    mean_logits = (out.mean_logits * scored).sum(-1) / counts if out.mean_logits is not None else average.detach()
    n = batch["chosen_labels"].shape[0]
    sft_term = -sums[:n].sum() / counts[:n].sum()
    return average[:n], average[n:], mean_logits[:n], mean_logits[n:], sft_term

