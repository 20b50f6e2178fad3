"""A few eager decode steps through the decode stack in one way of copying, for
compute-sanitizer (not a test: pytest does not collect it). One process a mode, so each report
names one mode's hazards. The tool slows the stack past its watchdog (2^33 cycles a wait), so
raise it first, in the working tree the run compiles:

    sed -i 's/kWatchdogCycles = 1ll << 33;/kWatchdogCycles = 1ll << 40;/' csrc/decode_stack.cuh
    compute-sanitizer --tool racecheck --report-api-errors no \\
        python3 tests/gpu/decode_stack_sanitizer.py gpt-bigcode plain 2

(argv: a family of tests/gpu/test_decode_stack.py, a way of copying of
server/engine/fused/decode_stack.py's COPIES, a pace). With plain copies every consumer lane
releases the stages it read, which racecheck follows: 0 hazards in the stack for both families
on an H100 (docs/benchmarks.md, session 28); the others' lane-0 releases it reports.
"""
import sys

sys.path.insert(0, ".")
import torch  # noqa: E402

from tests.golden.helpers import HandBatcher  # noqa: E402
from tests.gpu.test_decode_stack import FAMILIES, make_runner  # noqa: E402
from tests.gpu.test_cuda_graphs import BLOCK_SIZE, NUM_BLOCKS  # noqa: E402

family, copies, pacing = sys.argv[1], sys.argv[2], int(sys.argv[3])
runner = make_runner(FAMILIES[family], enforce_eager=True)
stack = runner.model.decode_stack
stack.copies, stack.pacing = copies, pacing
batcher = HandBatcher(num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE)
batcher.add(req_id="a", prompt_token_ids=[(7 * i) % 4093 + 3 for i in range(333)])
runner.forward_logits(batcher.step({"a": None}))
for step in range(3):
    batcher.record({"a": 5 + step})
    logits = runner.forward_logits(batcher.step({"a": 1}))[1]
torch.cuda.synchronize()
print(family, copies, pacing, "steps ok", float(logits.float().abs().sum()))
