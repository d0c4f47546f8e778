"""What sharded training hands to the adapter's save, in every process (a measuring aid, not part of the studio).

    PYTHONPATH=results/fsdp_save_diag:$PYTHONPATH python3 launch.py train ... train.parallel=fsdp

Prints to each process's log how many tensors the trainer's gathered state dict holds, a few of their
names, and how many PEFT keeps for the adapter.
"""

import functools
import os
import sys

import transformers
from peft.utils import save_and_load


def _say(text):
    print(f"[save-diag rank {os.environ.get('RANK', '?')}] {text}", file=sys.stderr, flush=True)


_save = transformers.Trainer._save


@functools.wraps(_save)
def _traced_save(self, output_dir=None, state_dict=None):
    if state_dict is None:
        _say(f"_save({output_dir}) without a state dict")
    else:
        lora = [k for k in state_dict if "lora_" in k]
        _say(f"_save({output_dir}): {len(state_dict)} tensors, {len(lora)} lora; first {list(state_dict)[:3]}; "
             f"lora {lora[:2]}; type of model {type(self.model).__name__}")
    return _save(self, output_dir, state_dict)


transformers.Trainer._save = _traced_save
_get = save_and_load.get_peft_model_state_dict


@functools.wraps(_get)
def _traced_get(model, state_dict=None, *args, **kwargs):
    out = _get(model, state_dict, *args, **kwargs)
    _say(f"get_peft_model_state_dict: given {None if state_dict is None else len(state_dict)}, kept {len(out)}")
    return out


save_and_load.get_peft_model_state_dict = _traced_get
import peft.peft_model  # noqa: E402  the name PeftModel.save_pretrained calls

peft.peft_model.get_peft_model_state_dict = _traced_get
