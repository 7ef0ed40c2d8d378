"""The optimize stage: candidate runtimes of a registered version (ONNX Runtime fp32/int8, torch
bf16, ...), each scored on the test split against the version's own fp32 model and judged by a
parity gate; the task plug-in builds and scores them (`Task.runtime_suite`).

What it leaves, on the version's source run and the version itself:

    runtimes/manifest.json          {"reference": "torch-fp32", "machine": {cpu_model, flags},
                                     "runtimes": [{name, kind, dtype, file, passed, reason, parity}]}
    runtimes/<name>/model.onnx      each parity-passed file runtime (inputs input_ids,
                                     attention_mask[, token_type_ids]; output logits)
    tags runtimes.passed            the passed names, comma-separated ("" when none)
         runtime.<name>.passed      true | false, runtime.<name>.reason when failed,
         runtime.<name>.<figure>    each parity figure

Aliases never move: which runtime serves is chosen where it runs.
"""
