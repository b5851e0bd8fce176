"""GPU probe: run variant "chunk"'s forward+backward at one shape (optionally with config overrides) and
compare every gradient with variant "recurrent" on the same inputs. One shape per process (a fault
corrupts the CUDA context), also under compute-sanitizer:

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck \
        python3 .ci/probes/chunk_backward.py --B 1 --T 4096 --H 8 --D 256
"""

import argparse
import json

import torch

import deltalab.variants.chunk as chunk_module
from deltalab.harness.numerics import rel_error
from deltalab.variants import delta_rule

parser = argparse.ArgumentParser()
parser.add_argument("--B", type=int, default=1)
parser.add_argument("--T", type=int, default=4096)
parser.add_argument("--H", type=int, default=8)
parser.add_argument("--D", type=int, default=256)
parser.add_argument("--config", default=None, help="JSON config overrides for chunk")
args = parser.parse_args()

torch.manual_seed(0)
shape = (args.B, args.T, args.H, args.D)
q = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
k = torch.nn.functional.normalize(torch.randn(shape, device="cuda"), dim=-1).to(torch.bfloat16)
v = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
beta = torch.rand(shape[:3], device="cuda", dtype=torch.bfloat16)
do = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
config = dict(chunk_module.DEFAULT_CONFIG, **json.loads(args.config)) if args.config else None
print("plan:", chunk_module.resolve_plan(config or chunk_module.DEFAULT_CONFIG, chunk_module._problem(q, v, chunk_module.chunk_layout(args.B, args.T, None, 64, q.device), False)))


def grads(variant, cfg):
    leaves = [x.clone().requires_grad_() for x in (q, k, v, beta)]
    o, _ = delta_rule(*leaves, variant=variant, config=cfg)
    return [o] + list(torch.autograd.grad(o, leaves, do))


ours = grads("chunk", config)
torch.cuda.synchronize()
ref = grads("recurrent", None)
for name, a, b in zip(("o", "dq", "dk", "dv", "dbeta"), ours, ref):
    print(f"{name}: rel err vs recurrent {rel_error(a.float(), b.float()):.2e} finite={bool(torch.isfinite(a).all())}")
