"""GPU probe: run a `deltalab` command with the chunk backward's head-dim guard lifted
(deltalab.variants.chunk.MAX_VERIFIED_BACKWARD_DIM), e.g. a sweep whose D = 256 rows should include the
chunk's forward+backward. Only for measuring whether the guard can go; the op keeps it until then.

    python3 .ci/probes/unguarded.py sweep --variants chunk --D 256 ...
"""

import deltalab.variants.chunk as chunk_module
from deltalab.harness.cli import app

chunk_module.MAX_VERIFIED_BACKWARD_DIM = 1 << 20
app(prog_name="deltalab")
