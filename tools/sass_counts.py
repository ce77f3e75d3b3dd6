"""Machine-code instruction counts of the issue-5 target kernels, without a GPU.

Compiles csrc/cuda/spd_kernels.cu and nll_kernels.cu with nvcc (the extension's flags) for
one architecture, disassembles them with cuobjdump, and counts, for spd_from_raw and
huber_nll (huber family, full covariance) forward and backward, d = 2 and 3, float32:

  instructions  SASS instructions of the kernel's main body, i.e. what runs for every
                tile and item: out-of-line subroutines reached by CALL (the slow paths
                of IEEE division and square root, taken only for extreme operands, and
                the generic tile path for the last, partial tile and misaligned rows,
                kernel_common.cuh run_tiles_generic) and padding NOPs are left out. A
                static count: loops count once;
  hot path      of which the instructions outside the basic blocks that call out-of-line
                code (their argument set-up, the CALL, the result loads): what a full tile
                of regular items issues per item, where `instructions` also counts the
                call sites of the last, partial tile and of special matrices
                (symeig3_mixed_special: c I, NaN, Inf); the JSON rows also give its fp64
                count (hot_path_fp64);
  fp64          of which FP64 arithmetic (D* instructions, MUFU.*64H), which Hopper
                issues at half the FP32 rate;
  mufu          special-function instructions (rcp, rsqrt, ex2, ...: quarter rate);
  ldg/stg, lds/sts  global and shared memory instructions;
  loops         the size of every loop in the main body (backward branches);
  registers     per thread (cuobjdump -res-usage).

These kernels move a few dozen bytes per item, so on an H100/H200 they reach the copy
bandwidth only while the per-item instruction count stays within the issue budget
(4 warp-instructions per SM per clock); the counts are the proxy for that budget that a
machine without a GPU can measure. cuobjdump comes from the CUDA toolkit, or from
Triton's wheel (triton/backends/nvidia/bin), which --cuobjdump or PATH can point at.

  python tools/sass_counts.py [--arch sm_90] [--policy mixed|double|both] [--json FILE] [--markdown FILE]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The flags of setup.py's CUDAExtension and of torch's cpp_extension COMMON_NVCC_FLAGS.
NVCC_FLAGS = ["-O3", "--expt-relaxed-constexpr", "-std=c++17", "-D__CUDA_NO_HALF_OPERATORS__",
              "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-D__CUDA_NO_HALF2_OPERATORS__"]
# Mangled-name fragments of the compute-type policies (kernel_common.cuh).
POLICY_MANGLING = {"mixed": "fNS0_7ComputeIfEE", "double": "fNS0_9AllDoubleE"}


def find_tool(name: str, explicit: str | None) -> str | None:
    """explicit, else $CUDA_HOME/bin, PATH, /usr/local/cuda/bin, then Triton's copy."""
    if explicit:
        return explicit
    candidates = [os.path.join(os.environ[k], "bin", name) for k in ("CUDA_HOME", "CUDA_PATH") if k in os.environ]
    found = shutil.which(name)
    if found:
        candidates.append(found)
    candidates.append(os.path.join("/usr/local/cuda/bin", name))
    try:
        import triton  # noqa: F401 - only its bundled NVIDIA tools are used
        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name))
    except Exception:
        pass
    return next((c for c in candidates if os.path.isfile(c) and os.access(c, os.X_OK)), None)


def parse_sass(text: str) -> dict[str, list[str]]:
    """cuobjdump --dump-sass output -> {mangled function name: [instruction, ...]}
    (the instruction text without its address and trailing ';')."""
    functions: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            current = functions.setdefault(m.group(1), [])
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m and current is not None:
            current.append(m.group(2))
    return functions


def opcode(instruction: str) -> str:
    """The opcode with its modifiers, predicate guard removed ('@!P0 DFMA.RM R2, ...' -> 'DFMA.RM')."""
    return re.sub(r"^@!?U?P[T0-9]+\s+", "", instruction).split()[0]


def main_body(instructions: list[str]) -> list[str]:
    """The instructions up to the last EXIT before the first out-of-line subroutine
    (whose RET ends it) or the function's closing self-branch."""
    end = len(instructions)
    for i, ins in enumerate(instructions):
        if opcode(ins).startswith("RET"):
            end = i
            break
    exits = [i for i, ins in enumerate(instructions[:end]) if opcode(ins) == "EXIT"]
    return instructions[:exits[-1] + 1] if exits else instructions[:end]


def branch_target(instruction: str) -> int | None:
    """The index of a BRA's target (branch targets are byte addresses; SASS instructions
    are 16 bytes), None for other instructions."""
    m = re.search(r"BRA\s+(?:!?U?P\w+,\s*)?(0x[0-9a-f]+)", instruction)
    return int(m.group(1), 16) // 16 if m and opcode(instruction).startswith("BRA") else None


def loop_sizes(instructions: list[str]) -> list[int]:
    """Sizes (in instructions) of the loops closed by a backward branch."""
    sizes = []
    for i, ins in enumerate(instructions):
        target = branch_target(ins) if opcode(ins) == "BRA" else None
        if target is not None and target <= i:
            sizes.append(i - target + 1)
    return sizes


def basic_blocks(instructions: list[str]) -> list[tuple[int, int]]:
    """[start, end) index ranges of the basic blocks: a block starts at the first
    instruction, at every branch target and after every branch or EXIT (a CALL returns to
    the next instruction, so it does not end one)."""
    leaders = {0}
    for i, ins in enumerate(instructions):
        target = branch_target(ins)
        if target is not None:
            leaders.add(target)
        if target is not None or opcode(ins) == "EXIT":
            leaders.add(i + 1)
    starts = sorted(x for x in leaders if x < len(instructions))
    return list(zip(starts, starts[1:] + [len(instructions)]))


def hot_path(instructions: list[str]) -> list[str]:
    """The instructions outside the basic blocks that contain a CALL."""
    hot = []
    for start, end in basic_blocks(instructions):
        block = instructions[start:end]
        if not any(opcode(ins).startswith("CALL") for ins in block):
            hot.extend(block)
    return hot


def classify(instructions: list[str]) -> dict:
    counts = collections.Counter()
    for ins in instructions:
        op = opcode(ins)
        if op == "NOP":
            continue
        counts["instructions"] += 1
        base = op.split(".")[0]
        if base in ("DFMA", "DADD", "DMUL", "DSETP", "DMNMX", "DSET") or (base == "MUFU" and "64H" in op):
            counts["fp64"] += 1
        if base == "MUFU":
            counts["mufu"] += 1
        if base in ("LDG", "STG", "LDS", "STS"):
            counts[base.lower()] += 1
    return {k: counts.get(k, 0) for k in ("instructions", "fp64", "mufu", "ldg", "stg", "lds", "sts")}


def target_kernels(policy: str) -> list[tuple[str, str, str]]:
    """(source file, row label, mangled-name regex) of the issue-5 targets."""
    mangled = POLICY_MANGLING[policy]
    rows = []
    for d in (2, 3):
        for direction in ("forward", "backward"):
            rows.append(("spd_kernels.cu", f"spd_from_raw {direction} d={d} ({policy})",
                         rf"spd_from_raw_{direction}_kernelILi{d}E{mangled}"))
    for d in (2, 3):
        for direction in ("forward", "backward"):
            # huber family (0), full covariance (2): probreg/nll.py FAMILY_CODES, COVARIANCE_CODES
            rows.append(("nll_kernels.cu", f"huber_nll full {direction} d={d} ({policy})",
                         rf"huber_nll_{direction}_kernelILi{d}ELi0ELi2E{mangled}"))
    return rows


def parse_registers(text: str) -> dict[str, int]:
    """cuobjdump -res-usage output -> {mangled function name: registers per thread}."""
    registers = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"Function (\S+):", line)
        if m:
            current = m.group(1)
        m = re.search(r"REG:(\d+)", line)
        if m and current:
            registers[current] = int(m.group(1))
            current = None
    return registers


def compile_and_dump(source: str, arch: str, nvcc: str, cuobjdump: str, extra: list[str], workdir: str):
    cubin = os.path.join(workdir, os.path.basename(source) + ".cubin")
    cmd = [nvcc, "-cubin", f"-arch={arch}", *NVCC_FLAGS, *extra, f"-I{os.path.join(ROOT, 'csrc', 'include')}",
           f"-I{os.path.join(ROOT, 'csrc')}", source, "-o", cubin]
    subprocess.run(cmd, check=True)
    sass = subprocess.run([cuobjdump, "--dump-sass", cubin], check=True, capture_output=True, text=True).stdout
    usage = subprocess.run([cuobjdump, "-res-usage", cubin], check=True, capture_output=True, text=True).stdout
    return parse_sass(sass), parse_registers(usage)


def measure(arch: str, policies: list[str], nvcc: str, cuobjdump: str, extra: list[str]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        dumps = {name: compile_and_dump(os.path.join(ROOT, "csrc", "cuda", name), arch, nvcc, cuobjdump, extra, workdir)
                 for name in ("spd_kernels.cu", "nll_kernels.cu")}
        for policy in policies:
            for source, label, pattern in target_kernels(policy):
                functions, registers = dumps[source]
                matches = [f for f in functions if re.search(pattern, f)]
                if len(matches) != 1:
                    raise RuntimeError(f"{label}: expected one kernel matching {pattern}, found {matches}")
                body = main_body(functions[matches[0]])
                counts, hot = classify(body), classify(hot_path(body))
                rows.append({"kernel": label, "instructions": counts.pop("instructions"),
                             "hot_path": hot["instructions"], **counts, "hot_path_fp64": hot["fp64"],
                             "loops": loop_sizes(body), "registers": registers.get(matches[0])})
    return rows


def markdown(rows: list[dict], arch: str, extra: list[str]) -> str:
    head = ["kernel", "instructions", "hot_path", "fp64", "mufu", "ldg", "stg", "lds", "sts", "loops", "registers"]
    lines = [f"SASS of the main body per kernel ({arch}; nvcc {' '.join(NVCC_FLAGS + extra)})", "",
             "| " + " | ".join(h.replace("_", " ") for h in head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(str(r[k]) if k != "loops" else " ".join(map(str, r[k])) or "-"
                                       for k in head) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--policy", choices=["mixed", "double", "both"], default="mixed",
                        help="float32 compute policy (kernel_common.cuh): mixed (default) or AllDouble")
    parser.add_argument("--nvcc")
    parser.add_argument("--cuobjdump")
    parser.add_argument("--nvcc-flags", default=os.environ.get("PROBREG_NVCC_FLAGS", ""),
                        help="extra nvcc flags (default: $PROBREG_NVCC_FLAGS, as setup.py)")
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--markdown", help="also write the table, with this command, as markdown here")
    args = parser.parse_args(argv)
    nvcc, cuobjdump = find_tool("nvcc", args.nvcc), find_tool("cuobjdump", args.cuobjdump)
    missing = [n for n, p in (("nvcc", nvcc), ("cuobjdump", cuobjdump)) if p is None]
    if missing:
        print(f"sass_counts: not found: {', '.join(missing)} (cuobjdump: CUDA toolkit, or `pip install triton`)",
              file=sys.stderr)
        return 2
    policies = ["mixed", "double"] if args.policy == "both" else [args.policy]
    extra = shlex.split(args.nvcc_flags)
    rows = measure(args.arch, policies, nvcc, cuobjdump, extra)
    table = markdown(rows, args.arch, extra)
    print(table)
    if args.markdown:
        command = "python tools/sass_counts.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
        with open(args.markdown, "w") as f:
            f.write(f"# SASS instruction counts of the issue-5 target kernels\n\nCommand: `{command}`\n"
                    f"(nvcc: {version})\n\n{table}\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"arch": args.arch, "nvcc_flags": NVCC_FLAGS + extra, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
