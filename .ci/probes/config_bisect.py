"""GPU probe: the sampled chunk config that failed numerics on an H200 (tests/test_chunk.py::
test_gpu_sampled_configs, bf16), and the same config with one key at a time set back to its default:
which launch setting breaks the answer. Forward only; o and final-state errors against the reference."""

import json

import torch

from deltalab.harness.numerics import random_inputs, rel_error
from deltalab.variants import Problem, delta_rule
from deltalab.variants.chunk_config import DEFAULT_CONFIG

FAILED = {"chunk_size": 64, "input_precision": "ieee", "block_intra": 32, "warps_intra": 4, "stages_intra": 0,
          "block_v": 0, "warps_state": 4, "stages_state": 1, "output": "auto", "block_v_out": 32, "warps_out": 0,
          "stages_out": 1}
problem = Problem(B=1, T=300, H=2, K=128, V=96, dtype=torch.bfloat16, device="cuda")
inputs = random_inputs(problem, seed=2, device="cuda")
args = (inputs.q, inputs.k, inputs.v, inputs.beta)
ref_o, ref_h = delta_rule(*(x.double() for x in args), initial_state=inputs.initial_state.double(),
                          output_final_state=True, variant="reference")
trials = {"failed": FAILED}
for key in FAILED:
    if FAILED[key] != DEFAULT_CONFIG[key]:
        trials[f"{key}={DEFAULT_CONFIG[key]}"] = dict(FAILED, **{key: DEFAULT_CONFIG[key]})
trials["output=fused"] = dict(FAILED, output="fused")
trials["default"] = {}
for name, config in trials.items():
    o, h = delta_rule(*args, initial_state=inputs.initial_state, output_final_state=True, variant="chunk", config=config)
    print(f"{name:28s} o {rel_error(o, ref_o):.2e}  final_state {rel_error(h, ref_h):.2e}", flush=True)
print(json.dumps(FAILED))
