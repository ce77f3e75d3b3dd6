"""tools/sass_counts.py's parsing of cuobjdump output, on a hand-written listing (the tool
itself needs nvcc and cuobjdump; this keeps its counting honest without them)."""
import re
import sys

from helpers import ROOT

sys.path.insert(0, f"{ROOT}/tools")
import sass_counts  # noqa: E402

# One kernel: a 2-instruction loop at 0x0020..0x0030 (backward branch), a predicated
# forward branch, an out-of-line slow path (CALL target after EXIT, ending in RET) and
# padding. cuobjdump prints each instruction as /*address*/ text ; /* encoding */.
LISTING = """
\t.target\tsm_90

\t\tFunction : _Z6kernelPf
\t.headerflags\t@"EF_CUDA_SM90"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                 /* 0x00000a00ff017b82 */
                                                                         /* 0x000ff00000000800 */
        /*0010*/                   DFMA R2, R4, R6, R2 ;                  /* 0x0000000000000000 */
        /*0020*/                   LDG.E.CONSTANT R8, desc[UR6][R4.64] ;  /* 0x0000000000000000 */
        /*0030*/              @!P0 BRA 0x20 ;                             /* 0x0000000000000000 */
        /*0040*/                   MUFU.RSQ64H R3, R5 ;                   /* 0x0000000000000000 */
        /*0050*/               @P1 BRA P2, 0x70 ;                         /* 0x0000000000000000 */
        /*0060*/                   CALL.REL.NOINC 0x90 ;                  /* 0x0000000000000000 */
        /*0070*/                   STS [R0], R8 ;                         /* 0x0000000000000000 */
        /*0080*/                   EXIT ;                                 /* 0x0000000000000000 */
        /*0090*/                   MUFU.RCP R5, R4 ;                      /* 0x0000000000000000 */
        /*00a0*/                   RET.REL.NODEC R2 0x0 ;                 /* 0x0000000000000000 */
        /*00b0*/                   BRA 0xb0;                              /* 0x0000000000000000 */
        /*00c0*/                   NOP;                                   /* 0x0000000000000000 */

\t\tFunction : _Z5otherv
        /*0000*/                   EXIT ;                                 /* 0x0000000000000000 */
"""

RESOURCES = """
Resource usage:
 Common:
  GLOBAL:0
 Function _Z6kernelPf:
  REG:42 STACK:0 SHARED:1024 LOCAL:0 CONSTANT[0]:568 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _Z5otherv:
  REG:8 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:528 TEXTURE:0 SURFACE:0 SAMPLER:0
"""


def test_parse_and_count_main_body():
    functions = sass_counts.parse_sass(LISTING)
    assert list(functions) == ["_Z6kernelPf", "_Z5otherv"]
    kernel = functions["_Z6kernelPf"]
    assert len(kernel) == 13 and kernel[3] == "@!P0 BRA 0x20"
    assert sass_counts.opcode("@!P0 DFMA.RM R2, R4, R6, R2") == "DFMA.RM"
    body = sass_counts.main_body(kernel)
    assert body[-1] == "EXIT" and len(body) == 9  # the slow path after EXIT is left out
    assert sass_counts.loop_sizes(body) == [2]  # the predicated BRA P2 is a forward branch
    assert sass_counts.classify(body) == {"instructions": 9, "fp64": 2, "mufu": 1, "ldg": 1, "stg": 0,
                                          "lds": 0, "sts": 1}
    # blocks start at 0, the loop head 0x20, after each branch and at the branch target 0x70;
    # the hot path leaves out the one block that calls out of line (the CALL alone here)
    assert sass_counts.basic_blocks(body) == [(0, 2), (2, 4), (4, 6), (6, 7), (7, 9)]
    assert sass_counts.hot_path(body) == body[:6] + body[7:]


def test_registers_and_target_kernel_names():
    assert sass_counts.parse_registers(RESOURCES) == {"_Z6kernelPf": 42, "_Z5otherv": 8}
    rows = sass_counts.target_kernels("mixed")
    assert len(rows) == 8 and {r[0] for r in rows} == {"spd_kernels.cu", "nll_kernels.cu"}
    # the patterns match the mangled names of the kernels they name, and only those
    spd_d3 = "_ZN7probreg4cuda47_GLOBAL__N_spd_from_raw_forward_kernelILi3EfNS0_7ComputeIfEEEEvPKT0_PS5_ld"
    matching = [label for _, label, pattern in rows if re.search(pattern, spd_d3)]
    assert matching == ["spd_from_raw forward d=3 (mixed)"]
