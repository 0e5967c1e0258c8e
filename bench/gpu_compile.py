"""``python -m bench.gpu_compile``: compile every GPU kernel ahead of time for sm_80 and
sm_90 on a machine without a GPU, and check that each configuration the launchers can
choose inside the documented limits fits the target: shared memory within the block
limit (sm_90: 227 KiB, sm_80: 163 KiB), no register spills, tensor-core instructions
where the products should use them.

Triton kernels go through ``triton.compile(ASTSource(...), target=GPUTarget(...))`` with
the constants their own ``plan`` functions choose (so the check sees what a launch
would run); registers, spills and instructions come from the cubin (``cuobjdump
-res-usage``, ``nvdisasm``, both shipped with Triton). The CUDA kernels of
``llp_kernels._C`` are read from the built module (``cuobjdump -res-usage``; dynamic
shared memory from the module's own size functions).

    python -m bench.gpu_compile --arch 90 --arch 80 --json OUT.json [--md OUT.md] [--full] [--jobs 2]
                                [--cache bench/results/gpu-compile.json]

Default: the boundary configurations (every dtype and precision at the largest D and k
the API accepts, and the smallest k), which CI runs; ``--full`` adds the interior (D 16,
64, 128; kept lists 1, 8, 32, 128; both block heights). Exit status 1 when any
configuration does not fit.

A large kept list takes ptxas minutes, so ``--cache FILE`` reuses the results stored in a
previous ``--json`` for every configuration whose key — the Triton version, the text of
the kernel files and the configuration — is unchanged; CI passes the committed table, so
it compiles only what a change touched.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

SHARED_LIMIT = {90: 232448, 80: 166912}  # bytes of shared memory one block may use (opt-in)
DTYPES = {"fp32-ieee": ("float32", "ieee"), "fp32-tf32": ("float32", "tf32"),
          "bf16": ("bfloat16", "tf32"), "fp16": ("float16", "tf32")}
POINTER = {"float32": "*fp32", "bfloat16": "*bf16", "float16": "*fp16"}


@dataclass
class Config:
    kernel: str          # aggregation_forward | aggregation_backward | topk | bank_update
    arch: int
    dtype: str           # a key of DTYPES
    dim: int             # the D the plan was made for
    rows: int            # query rows the plan was made for (picks the block height)
    kp: int = 0          # top-k: kept keys per row
    result: Dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        extra = f" KP={self.kp}" if self.kernel == "topk" else ""
        return f"{self.kernel} sm_{self.arch} {self.dtype} D={self.dim} rows={self.rows}{extra}"


def _tool(name: str) -> str:
    import triton
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(path) if path.exists() else name


def kernel_and_signature(c: Config):
    """(jit function, signature, Launch) of one configuration: the Launch is the one the
    kernel's own ``plan`` returns, so its constants and options are what a launch uses."""
    import torch
    from llp_kernels.backends.triton import aggregation, bank_update, topk
    dtype, precision = DTYPES[c.dtype]
    ptr = POINTER[dtype]
    if c.kernel.startswith("aggregation"):
        backward = c.kernel.endswith("backward")
        launch = aggregation.plan(c.rows, c.dim, getattr(torch, dtype), precision, True, backward)
        fn = aggregation._lse_backward_kernel if backward else aggregation._lse_forward_kernel
        outputs = (["lse_all_ptr", "lse_same_ptr", "scale_ptr", "dq_ptr"] if backward
                   else ["m_all_ptr", "s_all_ptr", "m_same_ptr", "s_same_ptr"])
        sig = {"q_ptr": ptr, "bank_ptr": ptr, "bank_labels_ptr": "*i64", "query_labels_ptr": "*i64",
               **{name: "*fp32" for name in outputs}, "B": "i32", "N": "i32", "D": "i32",
               "n_per_split": "i32", "inv_tau": "fp32"}
    elif c.kernel == "topk":
        launch = topk.plan(c.rows, c.dim, c.kp, getattr(torch, dtype), precision, True, True)
        fn = topk._topk_kernel
        sig = {"q_ptr": ptr, "keys_ptr": ptr, "bias_ptr": "*fp32", "out_ptr": "*i64", "queue_ptr": "*i64",
               "Q": "i32", "N": "i32",
               "D": "i32", "n_per_split": "i32", "inv_tau": "fp32"}
    else:
        launch = bank_update.plan(c.dim)
        fn = bank_update._bank_update_kernel
        sig = {"bank_ptr": ptr, "indices_ptr": "*i64", "emb_ptr": "*fp32", "D": "i32", "momentum": "fp32"}
    sig.update({name: "constexpr" for name in launch.constants})
    return fn, sig, launch


def launch_attrs(fn, sig: Dict[str, str], c: Config) -> Dict:
    """The specialisations a real launch gets (Triton marks 16-byte aligned pointers and
    integer arguments divisible by 16): every pointer (torch allocations are aligned),
    ``n_per_split`` (a whole number of tiles) and ``D`` when it is a multiple of 16.
    Without them the compiler cannot prove rows are aligned and loads go element by
    element, so the check would see code no launch runs."""
    divisible = [name for name, kind in sig.items() if kind.startswith("*")] + ["n_per_split"]
    if c.dim % 16 == 0:
        divisible.append("D")
    return {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible if name in sig}


def read_compiled(ptx: str, cubin: bytes) -> Dict:
    """Registers, stack frame and spill bytes (``ptxas -v`` on the kernel's PTX) and the
    tensor-core instructions of its cubin (``nvdisasm``)."""
    target = re.search(r"\.target\s+(sm_\w+)", ptx).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "k.ptx").write_text(ptx)
        (Path(tmp) / "k.cubin").write_bytes(cubin)
        for ptxas in (_tool("ptxas-blackwell"), _tool("ptxas"), "ptxas"):  # the one that reads this PTX version
            run = subprocess.run([ptxas, f"-arch={target}", "-v", "-o", str(Path(tmp) / "out.cubin"),
                                  str(Path(tmp) / "k.ptx")], capture_output=True, text=True)
            if run.returncode == 0:
                break
        info = run.stderr
        sass = subprocess.run([_tool("nvdisasm"), "-c", str(Path(tmp) / "k.cubin")], capture_output=True,
                              text=True).stdout
    return {**ptxas_usage(info), **instructions(sass)}


def ptxas_usage(text: str) -> Dict:
    def number(pattern):
        m = re.search(pattern, text)
        return int(m.group(1)) if m else 0
    return {"registers": number(r"Used (\d+) registers"), "stack": number(r"(\d+) bytes stack frame"),
            "spill_bytes": number(r"(\d+) bytes spill stores")}


def parse_usage(text: str) -> List[Dict]:
    """Per kernel of ``cuobjdump -res-usage`` output: name, registers, stack, local
    (spill) bytes, static shared bytes."""
    found, name = [], None
    for line in text.splitlines():
        m = re.search(r"Function (\S+):", line)
        if m:
            name = m.group(1)
            continue
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
        if m and name:
            reg, stack, shared, local = (int(g) for g in m.groups())
            found.append({"function": name, "registers": reg, "stack": stack, "static_shared": shared,
                          "spill_bytes": local})
            name = None
    return found


def instructions(sass: str) -> Dict:
    ops = re.findall(r"\b(HGMMA|HMMA|IMMA|FFMA|LDSM)\b", sass)
    count = {op: ops.count(op) for op in ("HGMMA", "HMMA", "FFMA", "LDSM")}
    return {"tensor_core": count["HGMMA"] + count["HMMA"] > 0, "instructions": count}


KERNEL_MODULES = ("aggregation", "topk", "bank_update", "_launch")


def cache_key(c: Config) -> str:
    """What a compile depends on, hashed: triton's version, the source of every
    ``@triton.jit`` function of the kernel modules (the kernels and their helpers), and the
    configuration with the signature, constants and options its ``plan`` gives. Launchers
    and docstrings around the kernels can change without invalidating the cache."""
    import hashlib
    import importlib

    import triton
    from triton.runtime.jit import JITFunction
    h = hashlib.sha256(triton.__version__.encode())
    for module in KERNEL_MODULES:
        found = vars(importlib.import_module(f"llp_kernels.backends.triton.{module}"))
        for name in sorted(found):
            if isinstance(found[name], JITFunction) and found[name].__module__.endswith(module):
                h.update(f"{module}.{name}".encode() + found[name].src.encode())
    _, sig, launch = kernel_and_signature(c)
    h.update(json.dumps([c.kernel, c.arch, c.dtype, c.dim, c.rows, c.kp, sig, launch.constants,
                         launch.options(on_gpu=True)], sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def load_cache(path: Optional[str]) -> Dict[str, Dict]:
    if not path or not Path(path).is_file():
        return {}
    data = json.loads(Path(path).read_text())
    return {e["key"]: e["result"] for e in data.get("triton", []) if "key" in e}


def compile_triton(c: Config) -> Config:
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    start = time.time()
    try:
        fn, sig, launch = kernel_and_signature(c)
        kernel = triton.compile(ASTSource(fn, sig, launch.constants, launch_attrs(fn, sig, c)),
                                target=GPUTarget("cuda", c.arch, 32), options=launch.options(on_gpu=True))
        c.result = {"shared": int(kernel.metadata.shared), "warps": launch.warps, "stages": launch.stages,
                    **{k: v for k, v in launch.constants.items() if k.startswith("BLOCK") or k == "KP"},
                    **read_compiled(kernel.asm["ptx"], kernel.asm["cubin"])}
    except Exception as exc:  # a compile that fails is a finding, not a crash of the check
        c.result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    c.result["seconds"] = round(time.time() - start, 1)
    return c


def stored(c: Config) -> Dict:
    """A configuration as --json writes it: a result read from the cache is stored as it was
    first measured (its compile seconds included), so the file stays a valid cache."""
    d = asdict(c)
    d["result"] = {k: v for k, v in d["result"].items() if k != "cached"}
    return d


def verdict(c: Config) -> str:
    r = c.result
    if "error" in r:
        return "compile error"
    problems = []
    if r["shared"] > SHARED_LIMIT[c.arch]:
        problems.append(f"shared {r['shared']} > {SHARED_LIMIT[c.arch]}")
    if r.get("spill_bytes", 0) > 0:
        problems.append(f"spills {r['spill_bytes']} B")
    wants_tc = c.kernel != "bank_update" and c.dtype != "fp32-ieee"
    if wants_tc and not r.get("tensor_core"):
        problems.append("no tensor-core instructions")
    return "; ".join(problems) or "ok"


def triton_configs(arches: List[int], full: bool) -> List[Config]:
    """The configurations a launch can choose inside the limits the triton backend registers. Default:
    the boundaries, where resources peak or the code changes shape: every dtype and
    precision at the largest D with the larger block height and, for top-k, the largest
    kept list; the smallest D and kept list. ``full`` adds the interior."""
    from llp_kernels.backends.triton import MAX_DIM, MAX_KEPT
    dims = [16, 64, 128, MAX_DIM] if full else [128, MAX_DIM]
    kps = [2 ** i for i in range(MAX_KEPT.bit_length()) if 2 ** i in (1, 8, 32, 128, MAX_KEPT)] if full else [MAX_KEPT]
    configs = []
    for arch in arches:
        for dtype in DTYPES:
            for dim in dims:
                for rows in ((16, 64) if full else (64,)):
                    configs += [Config(k, arch, dtype, dim, rows) for k in ("aggregation_forward",
                                                                            "aggregation_backward")]
                configs += [Config("topk", arch, dtype, dim, 64, kp) for kp in kps]
        configs += [Config("topk", arch, d, 16, 16, 1) for d in ("fp32-tf32", "bf16")]
        configs.append(Config("bank_update", arch, "fp32-ieee", MAX_DIM, 1))
    return configs


SASS_OPS = ("HMMA", "LDSM", "LDS", "STS", "LDGSTS", "SHFL", "BAR")


def sass_counts(sass: str) -> Dict[str, Dict[str, int]]:
    """Static count of the instructions that show where a tensor-core kernel spends its
    issue slots, per function of ``cuobjdump -sass`` output: HMMA (tensor core), LDSM
    (ldmatrix), LDS/STS (other shared loads/stores), LDGSTS (cp.async), SHFL, BAR."""
    counts, name = {}, None
    for line in sass.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            name = m.group(1)
            counts.setdefault(name, {op: 0 for op in SASS_OPS})
            continue
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9]+)", line)
        if m and name and m.group(1) in SASS_OPS:
            counts[name][m.group(1)] += 1
    return counts


def cuda_rows(module_path: Optional[str]) -> List[Dict]:
    """``cuobjdump -res-usage`` of the built ``_C`` (its CUDA kernels; also any cubin), with
    SASS instruction counts, or [] without them."""
    if module_path is None:
        return []
    rows = []
    for flavour in ("-res-usage", "-sass"):
        text = subprocess.run([_tool("cuobjdump"), flavour, module_path], capture_output=True, text=True).stdout
        for block in re.split(r"\n(?=Fatbin elf code)", text):
            m = re.search(r"arch = sm_(\d+)", block) or re.search(r"code for sm_(\d+)", block)
            arch = int(m.group(1)) if m else None
            if flavour == "-res-usage":
                for entry in parse_usage(block):
                    entry["arch"] = arch
                    entry["ok"] = entry["spill_bytes"] == 0
                    rows.append(entry)
            else:
                for name, ops in sass_counts(block).items():
                    for entry in rows:
                        if entry["function"] == name and entry["arch"] in (arch, None) and "sass" not in entry:
                            entry["arch"] = entry["arch"] or arch  # a bare cubin names its arch only here
                            entry["sass"] = ops
                            break
    return rows


def cuda_shared_rows(arches: List[int]) -> List[Dict]:
    """Dynamic shared memory of the CUDA kernels' blocks (from the module's own size
    functions, which the launches use) at the largest D and every kept size, per target."""
    from llp_kernels._extension import cuda_compiled, extension
    if not cuda_compiled():
        return []
    C = extension()
    rows = []
    for arch in arches:
        for dtype, code in (("fp32", 0), ("bf16", 1), ("fp16", 2)):
            for dim in (128, C.cuda_max_dim):
                cases = [("aggregation", 0)] + [("topk", kp) for kp in (32, 64, 128, C.cuda_max_kept)]
                for kernel, kp in cases:
                    shared = C.testing.cuda_shared_bytes(kernel, code, dim, kp)
                    rows.append({"kernel": kernel, "arch": arch, "dtype": dtype, "dim": dim, "kp": kp,
                                 "shared": shared, "ok": shared <= SHARED_LIMIT[arch]})
    return rows


def demangled(name: str) -> str:
    """``topk_kernel<__nv_bfloat16, 64>`` from a mangled kernel name (c++filt when present)."""
    try:
        text = subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip()
    except OSError:
        return name
    m = re.search(r"(\w+_kernel<[^()]*>)", text)
    return m.group(1) if m else text


def markdown(configs: List[Config], cuda: List[Dict], cuda_shared: List[Dict], seconds: float) -> str:
    lines = ["| kernel | arch | dtype | D | rows | KP | blocks (Q/B, N, D) | warps/stages | shared B | regs | spills B | tensor cores | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in configs:
        r = c.result
        blocks = "/".join(str(r.get(k, "")) for k in ("BLOCK_Q", "BLOCK_B", "BLOCK_N", "BLOCK_D") if k in r)
        lines.append(f"| {c.kernel} | sm_{c.arch} | {c.dtype} | {c.dim} | {c.rows} | {c.kp or ''} | {blocks} | "
                     f"{r.get('warps', '')}/{r.get('stages', '')} | {r.get('shared', '')} | {r.get('registers', '')} | "
                     f"{r.get('spill_bytes', '')} | {'yes' if r.get('tensor_core') else 'no'} | {verdict(c)} |")
    if cuda:
        ops = " | ".join(SASS_OPS)
        lines += ["", "CUDA kernels of llp_kernels._C (cuobjdump -res-usage and -sass: static instruction counts; "
                  "dynamic shared memory is sized at launch):", "",
                  f"| function | arch | regs | static shared B | spills B | {ops} |",
                  "|---|---|---|---|---|" + "---|" * len(SASS_OPS)]
        for e in cuda:
            counts = " | ".join(str(e.get("sass", {}).get(op, "")) for op in SASS_OPS)
            lines.append(f"| {demangled(e['function'])} | sm_{e['arch']} | {e['registers']} | {e['static_shared']} | "
                         f"{e['spill_bytes']} | {counts} |")
    if cuda_shared:
        lines += ["", "Dynamic shared memory of the CUDA kernels' blocks (bytes; limit sm_90 232,448, sm_80 166,912):", "",
                  "| kernel | arch | dtype | D | KP | shared B | fits |", "|---|---|---|---|---|---|---|"]
        for e in cuda_shared:
            lines.append(f"| {e['kernel']} | sm_{e['arch']} | {e['dtype']} | {e['dim']} | {e['kp'] or ''} | "
                         f"{e['shared']} | {'yes' if e['ok'] else 'NO'} |")
    compiled = [c for c in configs if not c.result.get("cached")]
    lines.append(f"\n{len(configs)} Triton configurations ({len(compiled)} compiled in this run, "
                 f"{sum(c.result.get('seconds', 0) for c in compiled):.0f} s of compiling; the rest from the "
                 f"cache); {seconds:.0f} s in all. Compiling all of them took "
                 f"{sum(c.result.get('seconds', 0) for c in configs):.0f} s (summed over configurations, "
                 f"as measured when each was compiled).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_compile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, action="append", choices=sorted(SHARED_LIMIT),
                        help="target compute capability (repeatable; default 90 and 80)")
    parser.add_argument("--full", action="store_true", help="every power-of-two D and kept size, not only the boundaries")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiles in parallel")
    parser.add_argument("--json", help="write every configuration's numbers here")
    parser.add_argument("--md", help="write the table here (Markdown)")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA kernels of _C")
    parser.add_argument("--cache", help="a previous --json: reuse its results where nothing changed")
    parser.add_argument("--cuda-module", help="read the CUDA kernels from this module or cubin instead of _C")
    args = parser.parse_args(argv)
    arches = args.arch or [90, 80]
    start = time.time()
    configs = triton_configs(arches, args.full)
    cache = load_cache(args.cache)
    keys = {id(c): cache_key(c) for c in configs}
    todo = [c for c in configs if keys[id(c)] not in cache]
    for c in configs:
        if keys[id(c)] in cache:
            c.result = {**cache[keys[id(c)]], "cached": True}
    print(f"{len(configs)} Triton configurations for sm_{', sm_'.join(map(str, arches))}: "
          f"{len(configs) - len(todo)} unchanged since the cache, {len(todo)} to compile with {args.jobs} jobs",
          flush=True)
    with ProcessPoolExecutor(max(1, args.jobs)) as pool:
        for c, fresh in zip(todo, pool.map(compile_triton, todo)):
            c.result = fresh.result
            print(f"  {c.name}: {verdict(c)} (shared {c.result.get('shared')}, regs "
                  f"{c.result.get('registers')}, {c.result['seconds']} s)", flush=True)
    done = configs
    module = None
    if args.cuda_module:
        module = args.cuda_module
    elif not args.no_cuda:
        from llp_kernels._extension import cuda_compiled, extension
        module = extension().__file__ if cuda_compiled() else None
    cuda = cuda_rows(module)
    cuda_shared = cuda_shared_rows(arches) if module and not args.cuda_module else []
    seconds = time.time() - start
    bad = [c for c in done if verdict(c) != "ok"] + [e for e in cuda + cuda_shared if not e["ok"]]
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": seconds, "shared_limit": SHARED_LIMIT,
                                               "triton": [stored(c) | {"verdict": verdict(c), "key": keys[id(c)]}
                                                          for c in done],
                                               "cuda": cuda, "cuda_shared": cuda_shared}, indent=1) + "\n")
    table = markdown(done, cuda, cuda_shared, seconds)
    if args.md:
        Path(args.md).write_text(table)
    print(table)
    print(f"{len(bad)} configurations do not fit" if bad else "every configuration fits", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
